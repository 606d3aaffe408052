"""Logging through the standard library: readable text by default, JSON lines for journald/shippers.

Facts go in ``extra={...}`` and appear as fields in JSON output (``pump``, ``part``, ``error`` ...),
so a log shipper can filter on them without parsing prose. Secrets are never passed to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message [key=value ...]`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")]
        return f"{text} [{' '.join(fields)}]" if fields else text


def setup_logging(
    level: str = "info", fmt: Literal["text", "json"] = "text", stream: TextIO | None = None
) -> None:
    """Configure the root logger once, replacing any handler set before (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pymodbus logs every transport hiccup at ERROR with its own wording; our drivers report the
    # same facts as typed errors, once, through the poller.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # aiomqtt's default logger ("mqtt") reports a dropped broker connection at ERROR; the MQTT
    # publisher reports the same once, as a warning, with the broker's address.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
