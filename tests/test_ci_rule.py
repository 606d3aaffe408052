"""In CI a skipped test is a failed test (tests/conftest.py); locally a skip is only reported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(("ci", "expected"), [("", 0), ("true", 1)])
def test_a_skip_fails_only_in_ci(tmp_path: Path, ci: str, expected: int) -> None:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_needs_something():\n    pytest.skip('no broker here')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = ci
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
