"""Packaging: pumpgw imports identically from a wheel, the development install and the repo root,
and never shadows the real fhir.resources, hl7apy or python-hl7 (shared/reference/dependencies.md §2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["gateway", "drivers", "hl7", "fhir", "rig"]

# Run in a child interpreter: list every pumpgw module and where the third-party packages come from.
PROBE = """
import importlib, json, pkgutil, sys
import pumpgw.gateway, pumpgw.drivers, pumpgw.hl7, pumpgw.fhir, pumpgw.rig
import fhir.resources, hl7, hl7apy
from importlib.resources import files
mods = set()
for sub in ("gateway", "drivers", "hl7", "fhir", "rig"):
    pkg = importlib.import_module("pumpgw." + sub)
    mods.add(pkg.__name__)
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        mods.add(info.name)
print(json.dumps({
    "modules": sorted(mods),
    "gateway_file": pumpgw.gateway.__file__,
    "fhir_resources": fhir.resources.__file__,
    "hl7_has_parse": hasattr(hl7, "parse"),
    "hl7apy": hl7apy.__file__,
    "register_map": files("pumpgw.drivers").joinpath("maps/rig-multichannel-v1.toml").is_file(),
}))
"""


def probe(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    proc = subprocess.run(
        [*args, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def assert_real_third_party(result: dict[str, object]) -> None:
    site = sysconfig.get_paths()["purelib"]
    assert str(result["fhir_resources"]).startswith(site), result["fhir_resources"]
    assert str(result["hl7apy"]).startswith(site), result["hl7apy"]
    assert result["hl7_has_parse"] is True  # python-hl7, not our hl7/ folder
    assert result["register_map"] is True


def test_hl7_and_fhir_folders_are_namespace_portions() -> None:
    # A folder named fhir/ or hl7/ with an __init__.py on sys.path shadows the real package.
    for name in ("hl7", "fhir"):
        assert not (ROOT / name / "__init__.py").exists()
    for name in ("gateway", "drivers", "rig"):
        assert (ROOT / name / "__init__.py").exists()
    for name in SUBPACKAGES:
        assert (ROOT / name / "py.typed").exists()


@pytest.fixture(scope="module")
def dev_from_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return probe([sys.executable], tmp_path_factory.mktemp("elsewhere"))


def test_development_install_from_another_folder(dev_from_elsewhere: dict[str, object]) -> None:
    assert_real_third_party(dev_from_elsewhere)
    assert "pumpgw.gateway.cli" in dev_from_elsewhere["modules"]  # type: ignore[operator]


def test_from_the_repository_root_with_cwd_on_sys_path(dev_from_elsewhere: dict[str, object]) -> None:
    # python -c puts the current directory first on sys.path, as python -m pytest does.
    result = probe([sys.executable], ROOT)
    assert_real_third_party(result)
    assert result["modules"] == dev_from_elsewhere["modules"]


def test_from_the_repository_root_with_safe_path(dev_from_elsewhere: dict[str, object]) -> None:
    result = probe([sys.executable, "-P"], ROOT)
    assert result["modules"] == dev_from_elsewhere["modules"]


@pytest.mark.slow
def test_installed_wheel_imports_the_same(tmp_path: Path, dev_from_elsewhere: dict[str, object]) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
         str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("pumpgw-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "pumpgw = pumpgw.gateway.cli:main" in zf.read(entry_points).decode()
    # The wheel must not install a top-level fhir/ or hl7/ (it would overwrite the real packages).
    assert not any(n.startswith(("fhir/", "hl7/", "gateway/")) for n in names), names
    assert "pumpgw/hl7/py.typed" in names
    assert "pumpgw/drivers/maps/rig-multichannel-v1.toml" in names

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    # -S: no site processing, so the development install's .pth finder is not loaded; the wheel's
    # files come first, the dependencies from this venv's site-packages after them.
    site = sysconfig.get_paths()["purelib"]
    bootstrap = f"import sys; sys.path[1:1] = [{str(target)!r}, {site!r}]\n"
    for cwd in (tmp_path, ROOT):
        proc = subprocess.run(
            [sys.executable, "-S", "-c", bootstrap + PROBE],
            cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert str(result["gateway_file"]).startswith(str(target)), result["gateway_file"]
        assert_real_third_party(result)
        assert result["modules"] == dev_from_elsewhere["modules"]


def test_console_script_runs() -> None:
    pumpgw = Path(sys.executable).with_name("pumpgw")
    proc = subprocess.run([str(pumpgw), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "run", "rig", "config", "events"):
        assert command in proc.stdout


def test_mypy_strict_resolves_every_subpackage(tmp_path: Path) -> None:
    user = tmp_path / "user.py"
    user.write_text(
        "from pumpgw.gateway.quantity import Quantity\n"
        "from pumpgw.drivers.base import PumpDriver\n"
        "from pumpgw.rig.physics import InfusionChannel\n"
        "import pumpgw.hl7\nimport pumpgw.fhir\n"
        "q: Quantity = Quantity.of('1', 'mL')\n"
        "d: PumpDriver | None = None\n"
        "c: InfusionChannel = InfusionChannel(1)\n"
        "bad: int = q\n"  # must be reported: proves mypy really sees our types
    )
    mypy = Path(sys.executable).with_name("mypy")
    proc = subprocess.run(
        [str(mypy), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(user)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "import-not-found" not in proc.stdout, proc.stdout
    assert (
        'Incompatible types in assignment (expression has type "Quantity", variable has type "int")'
        in proc.stdout
    )
    assert proc.stdout.count("error:") == 1, proc.stdout


def test_the_gateway_does_not_import_heavy_libraries_it_does_not_use_yet() -> None:
    # fhir.resources (~400 ms, 26 MiB), hl7apy and biip (~240 ms) are imported only when their
    # feature is in use (shared/reference/dependencies.md §11: all at once cost 70 MiB).
    code = (
        "import sys\n"
        "import pumpgw.gateway.cli, pumpgw.gateway.app, pumpgw.gateway.demo, pumpgw.gateway.mqtt\n"
        "import pumpgw.drivers.modbus, pumpgw.drivers.newera, pumpgw.rig.bench_rig\n"
        "print(sorted(m for m in ('fhir', 'hl7apy', 'hl7', 'biip') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
