"""Write the published JSON Schemas under docs/schema/ from the code that validates the documents.

Run through ``scripts/gen-schemas`` (which sets up .venv first). ``--check`` writes nothing and
exits 1 if a committed schema differs from what the code produces now; tests/test_library_schema.py
and tests/test_event_schema.py make the same comparison with :func:`render`, so the files and this
script cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pumpgw.gateway import events, library

ROOT = Path(__file__).resolve().parents[1]

#: Published file (relative to the repository root) -> the function that produces its schema.
SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "docs/schema/drug-library-1.schema.json": library.json_schema,
    "docs/schema/events-1.schema.json": events.json_schema,
}


def render(schema: dict[str, Any]) -> str:
    """The published text of a schema: pretty-printed, sorted keys, UTF-8, one trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: scripts/gen-schemas [--check]", file=sys.stderr)
        return 2
    stale = []
    for relative, produce in SCHEMAS.items():
        path = ROOT / relative
        text = render(produce())
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(relative)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {relative}")
    for relative in stale:
        print(f"{relative} is out of date: run scripts/gen-schemas", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
