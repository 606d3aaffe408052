"""The hazard log and the tests agree: every controlled hazard has tests that verify it.

docs/safety/hazard-log.md lists the clinical hazards (``### HAZ-NNN: title``, each with a
``- **Status:** controlled | open`` line). A test that verifies a control carries
``@pytest.mark.hazard("HAZ-NNN")`` (or a module's ``pytestmark``). This module reads both without
importing any test module (``ast``, so a test file that fails to import cannot hide its marks, and
no test's import side effects run here) and fails when:

- a test names a hazard id that the log does not have (a typo);
- a controlled hazard has no verifying test (the message lists every one);
- an open hazard is claimed: marked by a test, or its Status says anything but open;
- the log itself is malformed (no Status, two Statuses, an unknown status, an id twice).

The checker is tested first on small synthetic logs and test modules, so it is shown to fail when
it should; then it is run on the real ones.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LOG = ROOT / "docs" / "safety" / "hazard-log.md"
TESTS = Path(__file__).parent

HAZARD_ID = re.compile(r"^HAZ-\d{3}$")
_HEADING = re.compile(r"^###\s+(?P<id>HAZ-\S*?):?\s+(?P<title>.*\S)\s*$")
_STATUS = re.compile(r"^\s*[-*]\s+\*\*Status:?\*\*:?\s*(?P<value>.*?)\s*$")
STATUSES = ("controlled", "open")


# --- the checker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hazard:
    id: str
    title: str
    status: str  # "controlled" or "open" (the first word of the Status field)
    status_text: str  # the whole Status field, as written
    line: int


@dataclass(frozen=True)
class Mark:
    """One hazard id named by a hazard mark: where, and on what."""

    id: str
    where: str  # "tests/test_x.py:12 test_name"


def parse_log(text: str) -> tuple[dict[str, Hazard], list[str]]:
    """The hazards of a hazard log, by id, and every problem with the log's form."""
    problems: list[str] = []
    sections: list[tuple[str, str, int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            heading = _HEADING.match(line)
            if heading and HAZARD_ID.match(heading["id"]):
                sections.append((heading["id"], heading["title"], number, []))
                continue
            if "HAZ-" in line:
                problems.append(
                    f"line {number}: not a hazard heading of the form '### HAZ-NNN: title': {line!r}"
                )
            if sections and line.startswith(("# ", "## ", "### ")):
                sections.append(("", "", number, []))  # another section: ends the hazard before it
            continue
        if sections:
            sections[-1][3].append(line)
    hazards: dict[str, Hazard] = {}
    for hazard_id, title, number, body in sections:
        if not hazard_id:
            continue
        statuses = [m["value"] for m in map(_STATUS.match, body) if m]
        if len(statuses) != 1:
            problems.append(
                f"{hazard_id} (line {number}): {len(statuses)} Status fields, expected exactly one"
            )
            continue
        text_value = statuses[0]
        first = re.split(r"[\s:;,.(—-]+", text_value, maxsplit=1)[0].lower()
        if first not in STATUSES:
            problems.append(
                f"{hazard_id} (line {number}): Status {text_value!r} is not 'controlled' or 'open'"
            )
            continue
        if hazard_id in hazards:
            problems.append(
                f"{hazard_id} (line {number}): listed twice (first at line {hazards[hazard_id].line})"
            )
            continue
        hazards[hazard_id] = Hazard(hazard_id, title, first, text_value, number)
    return hazards, problems


def _is_hazard_mark(node: ast.AST) -> bool:
    """``pytest.mark.hazard`` or ``mark.hazard`` (from ``from pytest import mark``)."""
    if not isinstance(node, ast.Attribute) or node.attr != "hazard":
        return False
    owner = node.value
    return (isinstance(owner, ast.Attribute) and owner.attr == "mark") or (
        isinstance(owner, ast.Name) and owner.id == "mark"
    )


def _marks_in(node: ast.AST, where: str, problems: list[str], seen: set[int]) -> Iterator[Mark]:
    """Every hazard id named by a hazard mark anywhere inside ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and _is_hazard_mark(sub.func):
            if id(sub.func) in seen:
                continue  # already counted (a pytest.param inside a decorator)
            seen.add(id(sub.func))
            if not sub.args or sub.keywords:
                problems.append(f"{where}: a hazard mark takes hazard ids only: hazard('HAZ-001')")
            for arg in sub.args:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and HAZARD_ID.match(arg.value)
                ):
                    yield Mark(arg.value, where)
                else:
                    problems.append(
                        f"{where}: hazard mark argument {ast.unparse(arg)} is not a literal id like 'HAZ-001'"
                    )
        elif _is_hazard_mark(sub) and id(sub) not in seen:
            seen.add(id(sub))
            problems.append(f"{where}: a hazard mark without an id: write hazard('HAZ-NNN')")


def _pytestmark_values(body: Iterable[ast.stmt]) -> Iterator[tuple[ast.expr, int]]:
    """The values assigned to ``pytestmark`` (plain or annotated) in a module's or a class's body."""
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            yield value, stmt.lineno


def marks_in_module(source: str, filename: str) -> tuple[list[Mark], list[str]]:
    """The hazard marks of one test module, read statically, and every problem with them.

    Counted: marks in the decorators of functions and classes at any depth (including marks of
    ``pytest.param`` inside a ``parametrize`` decorator), in a module's or a class's
    ``pytestmark`` (one mark or a list), and in ``pytest.param(..., marks=...)`` anywhere. A hazard
    mark anywhere else (a variable, a helper) applies to no test the checker can see, so it is a
    problem rather than silently ignored.
    """
    tree = ast.parse(source, filename)
    problems: list[str] = []
    seen: set[int] = set()
    marks: list[Mark] = []
    for value, line in _pytestmark_values(tree.body):
        marks += _marks_in(value, f"{filename}:{line} pytestmark", problems, seen)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                marks += _marks_in(decorator, f"{filename}:{decorator.lineno} {node.name}", problems, seen)
            if isinstance(node, ast.ClassDef):
                for value, line in _pytestmark_values(node.body):
                    marks += _marks_in(value, f"{filename}:{line} {node.name}.pytestmark", problems, seen)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "param"
            and any(k.arg == "marks" for k in node.keywords)
        ):
            for k in node.keywords:
                if k.arg == "marks":
                    marks += _marks_in(k.value, f"{filename}:{node.lineno} pytest.param", problems, seen)
    problems += [
        f"{filename}:{getattr(node, 'lineno', '?')}: a hazard mark that is not on a test "
        "(use it as a decorator, in pytestmark or in pytest.param(marks=...))"
        for node in ast.walk(tree)
        if _is_hazard_mark(node) and id(node) not in seen
    ]
    return marks, problems


def marks_in_tests(folder: Path) -> tuple[list[Mark], list[str]]:
    marks: list[Mark] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.py")):
        found, trouble = marks_in_module(path.read_text(encoding="utf-8"), f"tests/{path.name}")
        marks += found
        problems += trouble
    return marks, problems


def unknown_ids(hazards: dict[str, Hazard], marks: Iterable[Mark]) -> list[str]:
    return [f"{m.where}: {m.id} is not in docs/safety/hazard-log.md" for m in marks if m.id not in hazards]


def uncovered(hazards: dict[str, Hazard], marks: Iterable[Mark]) -> list[Hazard]:
    """Controlled hazards that no test verifies."""
    marked = {m.id for m in marks}
    return [h for h in hazards.values() if h.status == "controlled" and h.id not in marked]


def claims_on_open(hazard: Hazard, marks: Iterable[Mark]) -> list[str]:
    """Why an open hazard looks controlled: a test marked with it, or a Status that says so."""
    claims = [f"{m.where} marks it" for m in marks if m.id == hazard.id]
    if re.search(r"\bcontrolled\b", hazard.status_text, re.IGNORECASE):
        claims.append(f"its Status says 'controlled': {hazard.status_text!r}")
    return claims


# --- the checker, on synthetic input ------------------------------------------------------------

SYNTHETIC_LOG = """\
# Hazard log

Introduction mentioning HAZ-NNN as a pattern in text is fine.

## Hazards

### HAZ-001: Too much drug

- **Status:** controlled
- **Cause:** a typo

### HAZ-002: Too little drug

- **Status:** controlled

### HAZ-003: Wrong patient

- **Status:** open: the workflow issue will deal with it

## Appendix

- **Status:** controlled
"""

SYNTHETIC_TESTS = """\
import pytest
from pytest import mark

pytestmark = [pytest.mark.slow, pytest.mark.hazard("HAZ-001")]


@pytest.mark.hazard("HAZ-001")
def test_plain() -> None: ...


@mark.hazard("HAZ-002", "HAZ-001")
async def test_async_two_ids() -> None: ...


@pytest.mark.parametrize("x", [pytest.param(1, marks=pytest.mark.hazard("HAZ-009")), 2])
def test_param(x: int) -> None: ...


CASES = [pytest.param(3, marks=[pytest.mark.hazard("HAZ-010")])]


@pytest.mark.hazard("HAZ-011")
class TestGroup:
    pytestmark = pytest.mark.hazard("HAZ-012")

    @pytest.mark.hazard("HAZ-013")
    def test_method(self) -> None: ...
"""


def test_the_log_parser_reads_ids_titles_and_statuses() -> None:
    hazards, problems = parse_log(SYNTHETIC_LOG)
    assert problems == []
    assert {h.id: (h.title, h.status) for h in hazards.values()} == {
        "HAZ-001": ("Too much drug", "controlled"),
        "HAZ-002": ("Too little drug", "controlled"),
        "HAZ-003": ("Wrong patient", "open"),
    }
    assert hazards["HAZ-003"].status_text == "open: the workflow issue will deal with it"
    assert hazards["HAZ-001"].line == 7


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("### HAZ-001: A\n\n- **Cause:** x\n", "HAZ-001 (line 1): 0 Status fields, expected exactly one"),
        (
            "### HAZ-001: A\n- **Status:** open\n- **Status:** controlled\n",
            "HAZ-001 (line 1): 2 Status fields, expected exactly one",
        ),
        (
            "### HAZ-001: A\n- **Status:** mitigated\n",
            "HAZ-001 (line 1): Status 'mitigated' is not 'controlled' or 'open'",
        ),
        (
            "### HAZ-001: A\n- **Status:** open\n### HAZ-001: B\n- **Status:** open\n",
            "HAZ-001 (line 3): listed twice (first at line 1)",
        ),
        (
            "### HAZ-1: A\n- **Status:** open\n",
            "line 1: not a hazard heading of the form '### HAZ-NNN: title': '### HAZ-1: A'",
        ),
        (
            "## HAZ-001 A\n- **Status:** open\n",
            "line 1: not a hazard heading of the form '### HAZ-NNN: title': '## HAZ-001 A'",
        ),
    ],
    ids=["no status", "two statuses", "unknown status", "an id twice", "a short id", "not a level-3 heading"],
)
def test_the_log_parser_reports_a_malformed_log(text: str, problem: str) -> None:
    _, problems = parse_log(text)
    assert problems == [problem]


def test_a_status_after_the_last_hazard_belongs_to_no_hazard() -> None:
    # The "Appendix" section ends HAZ-003: its Status line is not a second Status of HAZ-003.
    hazards, problems = parse_log(SYNTHETIC_LOG)
    assert problems == []
    assert hazards["HAZ-003"].status == "open"


def test_the_module_reader_finds_every_way_a_mark_is_applied() -> None:
    marks, problems = marks_in_module(SYNTHETIC_TESTS, "tests/test_synthetic.py")
    assert problems == []
    assert sorted((m.where, m.id) for m in marks) == sorted(
        [
            ("tests/test_synthetic.py:4 pytestmark", "HAZ-001"),
            ("tests/test_synthetic.py:7 test_plain", "HAZ-001"),
            ("tests/test_synthetic.py:11 test_async_two_ids", "HAZ-002"),
            ("tests/test_synthetic.py:11 test_async_two_ids", "HAZ-001"),
            ("tests/test_synthetic.py:15 test_param", "HAZ-009"),
            ("tests/test_synthetic.py:22 TestGroup", "HAZ-011"),
            ("tests/test_synthetic.py:24 TestGroup.pytestmark", "HAZ-012"),
            ("tests/test_synthetic.py:19 pytest.param", "HAZ-010"),
            ("tests/test_synthetic.py:26 test_method", "HAZ-013"),
        ]
    )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            'import pytest\n@pytest.mark.hazard("HAZ-01")\ndef test_x(): ...\n',
            "tests/test_bad.py:2 test_x: hazard mark argument 'HAZ-01' is not a literal id like 'HAZ-001'",
        ),
        (
            'import pytest\nID = "HAZ-001"\n@pytest.mark.hazard(ID)\ndef test_x(): ...\n',
            "tests/test_bad.py:3 test_x: hazard mark argument ID is not a literal id like 'HAZ-001'",
        ),
        (
            "import pytest\n@pytest.mark.hazard\ndef test_x(): ...\n",
            "tests/test_bad.py:2 test_x: a hazard mark without an id: write hazard('HAZ-NNN')",
        ),
        (
            "import pytest\n@pytest.mark.hazard()\ndef test_x(): ...\n",
            "tests/test_bad.py:2 test_x: a hazard mark takes hazard ids only: hazard('HAZ-001')",
        ),
        (
            'import pytest\nHAZ = pytest.mark.hazard("HAZ-001")\n@HAZ\ndef test_x(): ...\n',
            "tests/test_bad.py:2: a hazard mark that is not on a test "
            "(use it as a decorator, in pytestmark or in pytest.param(marks=...))",
        ),
    ],
    ids=["a short id", "an id in a variable", "no call", "no id", "a mark kept in a variable"],
)
def test_the_module_reader_reports_marks_it_cannot_read(source: str, problem: str) -> None:
    _, problems = marks_in_module(source, "tests/test_bad.py")
    assert problems == [problem]


def test_the_checks_fail_when_they_should() -> None:
    hazards, _ = parse_log(SYNTHETIC_LOG)
    marks = [
        Mark("HAZ-001", "tests/test_a.py:3 test_one"),
        Mark("HAZ-010", "tests/test_a.py:9 test_typo"),
        Mark("HAZ-003", "tests/test_a.py:12 test_claims_an_open_one"),
    ]
    assert unknown_ids(hazards, marks) == [
        "tests/test_a.py:9 test_typo: HAZ-010 is not in docs/safety/hazard-log.md"
    ]
    assert [h.id for h in uncovered(hazards, marks)] == ["HAZ-002"]
    assert claims_on_open(hazards["HAZ-003"], marks) == [
        "tests/test_a.py:12 test_claims_an_open_one marks it"
    ]
    said_controlled = Hazard("HAZ-003", "Wrong patient", "open", "open, but controlled by the nurse", 1)
    assert claims_on_open(said_controlled, []) == [
        "its Status says 'controlled': 'open, but controlled by the nurse'"
    ]
    # And they pass when all is well.
    good = [Mark("HAZ-001", "a"), Mark("HAZ-002", "b")]
    assert (
        unknown_ids(hazards, good),
        uncovered(hazards, good),
        claims_on_open(hazards["HAZ-003"], good),
    ) == (
        [],
        [],
        [],
    )


def test_the_reader_reads_files_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text(SYNTHETIC_TESTS, encoding="utf-8")
    (tmp_path / "helper.txt").write_text('@pytest.mark.hazard("HAZ-999")', encoding="utf-8")
    marks, problems = marks_in_tests(tmp_path)
    assert problems == []
    assert {m.id for m in marks} == {
        "HAZ-001",
        "HAZ-002",
        "HAZ-009",
        "HAZ-010",
        "HAZ-011",
        "HAZ-012",
        "HAZ-013",
    }
    assert all(m.where.startswith("tests/test_one.py:") for m in marks)


# --- the real hazard log and the real tests -----------------------------------------------------


def real_log() -> tuple[dict[str, Hazard], list[str]]:
    if not LOG.exists():
        return {}, [f"{LOG} is missing"]
    return parse_log(LOG.read_text(encoding="utf-8"))


def real_marks() -> tuple[list[Mark], list[str]]:
    return marks_in_tests(TESTS)


OPEN_HAZARDS = [h for h in real_log()[0].values() if h.status == "open"]


def test_the_hazard_log_is_well_formed() -> None:
    hazards, problems = real_log()
    assert problems == []
    ids = list(hazards)
    assert ids == sorted(ids), "hazards are listed in id order"
    assert len(hazards) >= 20


def test_every_hazard_mark_in_the_tests_is_readable() -> None:
    _, problems = real_marks()
    assert problems == []


def test_every_hazard_id_a_test_names_is_in_the_log() -> None:
    hazards, _ = real_log()
    marks, _ = real_marks()
    assert marks, "no test carries a hazard mark"
    assert unknown_ids(hazards, marks) == []


def test_every_controlled_hazard_has_a_verifying_test() -> None:
    hazards, _ = real_log()
    marks, _ = real_marks()
    missing = uncovered(hazards, marks)
    assert not missing, (
        "controlled hazards with no test marked @pytest.mark.hazard(...): "
        + ", ".join(f"{h.id} ({h.title})" for h in missing)
        + ". Mark the tests that verify their controls, or set their Status to open in docs/safety/hazard-log.md."
    )


@pytest.mark.parametrize("hazard", OPEN_HAZARDS, ids=[f"{h.id} open: {h.title}" for h in OPEN_HAZARDS])
def test_an_open_hazard_is_not_claimed_as_controlled(hazard: Hazard) -> None:
    marks, _ = real_marks()
    assert claims_on_open(hazard, marks) == [], (
        f"{hazard.id} is open in the hazard log: a verified control makes it controlled (change its Status "
        "and residual risk), or the claim is wrong"
    )
