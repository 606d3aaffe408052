"""The one error hierarchy of the gateway.

Every exception carries the facts that explain it (the file and key, the pump and command, the bad
value and the limit) as attributes, and a message built from them. Third-party exceptions (pymodbus,
pyserial, aiomqtt, sqlite3, pydantic) are mapped to these at the boundary with ``raise ... from exc``.

    PumpGwError
    ├── ConfigError                 a configuration file or option is wrong (file, key, value, expected)
    ├── QuantityError               a clinical value is malformed: not exact, unknown unit, wrong dimension
    ├── LibraryError                a drug library document is invalid (source, every problem with its path)
    │   └── LibraryNotTrusted       a library's approvals do not verify against the trust store (reason)
    ├── DersError                   a DERS evaluation was asked something meaningless (what, detail)
    ├── DriverError                 talking to a pump failed (pump, command)
    │   ├── NoResponse              the pump did not answer in time (timeout)
    │   ├── DeviceError             the pump answered with an error of its own (code, text)
    │   ├── ProtocolError           the bytes were not a valid reply (bad checksum, garbage, truncated)
    │   └── LinkLost                N consecutive failures: the link is declared down (failures)
    ├── EventLogError               the local event log cannot accept or read events (path)
    │   └── ChainBroken             the hash chain does not verify (seq, reason)
    ├── DeliveryError               an upstream destination refused or lost a delivery (destination)
    ├── PartFailed                  a supervised part of the gateway stopped with an error (part)
    └── EnvironmentProblem          the machine lacks something (a binary, a permission) (what, fix)

Whose fault it is: ``DeviceError`` is the pump's word, ``ProtocolError`` is a broken wire or peer,
``NoResponse`` is silence; ``ConfigError`` is the operator's file; ``EnvironmentProblem`` is the
machine. None of them is ever signalled by returning ``None`` or a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class PumpGwError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(PumpGwError):
    """A configuration value is wrong. ``key`` is a dotted path (``pumps[1].port``).

    ``also`` holds the other problems found in the same file, so one run reports them all.
    """

    def __init__(
        self, source: str, key: str, value: Any, expected: str, also: tuple[ConfigError, ...] = ()
    ) -> None:
        self.source = source
        self.key = key
        self.value = value
        self.expected = expected
        self.also = also
        lines = [f"{source}: {key} = {value!r} is not valid: expected {expected}"]
        lines += [f"  also: {p.key} = {p.value!r} is not valid: expected {p.expected}" for p in also]
        super().__init__("\n".join(lines))


class QuantityError(PumpGwError, ValueError):
    """A quantity could not be built: the value is not exact or the unit is unknown or mismatched."""

    def __init__(self, value: object, unit: str, reason: str) -> None:
        self.value = value
        self.unit = unit
        self.reason = reason
        super().__init__(f"quantity {value!r} {unit!r}: {reason}")


@dataclass(frozen=True, slots=True)
class LibraryProblem:
    """One problem in a drug library: where (``drugs[3].care_areas.icu.dose.soft_max``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class LibraryError(PumpGwError):
    """The drug library from ``source`` is not valid. ``problems`` lists every problem found at once."""

    def __init__(self, source: str, problems: Sequence[LibraryProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"drug library {source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class LibraryNotTrusted(LibraryError):
    """The library's approvals do not verify: unsigned, unknown key, bad signature, missing role."""

    def __init__(self, source: str, reason: str) -> None:
        self.reason = reason
        super().__init__(source, [LibraryProblem("(approvals)", reason)])


class DersError(PumpGwError):
    """A DERS evaluation was asked something meaningless (not a limit breach: those are results)."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"DERS: {what}: {detail}")


class DriverError(PumpGwError):
    """Talking to a pump failed. ``pump`` is the configured pump id, ``command`` what was asked."""

    def __init__(self, pump: str, command: str, detail: str) -> None:
        self.pump = pump
        self.command = command
        self.detail = detail
        super().__init__(f"pump {pump}: {command}: {detail}")


class NoResponse(DriverError):
    """The pump did not answer ``command`` within ``timeout_s`` seconds."""

    def __init__(self, pump: str, command: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(pump, command, f"no answer within {timeout_s:g} s")


class DeviceError(DriverError):
    """The pump itself reported an error (``code`` as the pump sent it, ``text`` in words)."""

    def __init__(self, pump: str, command: str, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(pump, command, f"pump reported {code}: {text}")


class ProtocolError(DriverError):
    """The bytes received were not a valid reply: ``data`` is what arrived, ``reason`` why not."""

    def __init__(self, pump: str, command: str, data: bytes, reason: str) -> None:
        self.data = data
        self.reason = reason
        super().__init__(pump, command, f"{reason} (received {data[:64]!r})")


class LinkLost(DriverError):
    """``failures`` consecutive exchanges failed; the link is down until a reconnect succeeds."""

    def __init__(self, pump: str, failures: int, last: BaseException) -> None:
        self.failures = failures
        self.last = last
        super().__init__(pump, "poll", f"link lost after {failures} consecutive failures: {last}")


class EventLogError(PumpGwError):
    """The event log at ``path`` cannot accept or read events."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"event log {path}: {detail}")


class ChainBroken(EventLogError):
    """The hash chain does not verify; ``seq`` is the first event that is wrong."""

    def __init__(self, path: str, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(path, f"hash chain broken at event seq {seq}: {reason}")


class DeliveryError(PumpGwError):
    """Delivering events to ``destination`` failed; the events stay in the outbox."""

    def __init__(self, destination: str, detail: str) -> None:
        self.destination = destination
        self.detail = detail
        super().__init__(f"delivery to {destination}: {detail}")


class PartFailed(PumpGwError):
    """A supervised part (``part``) of the gateway stopped with an error."""

    def __init__(self, part: str, cause: BaseException) -> None:
        self.part = part
        self.cause = cause
        super().__init__(f"{part} failed: {type(cause).__name__}: {cause}")


class EnvironmentProblem(PumpGwError):
    """The machine lacks ``what``; ``fix`` is the exact thing to do about it."""

    def __init__(self, what: str, fix: str) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}; to fix: {fix}")


class Hl7Error(PumpGwError):
    """An HL7 v2 message that cannot be read or built; ``detail`` names the segment and field."""

    def __init__(self, detail: str, *, control_id: str | None = None) -> None:
        self.detail = detail
        self.control_id = control_id
        where = f" (message {control_id})" if control_id else ""
        super().__init__(f"HL7{where}: {detail}")


class MllpError(PumpGwError):
    """The MLLP link to ``peer`` failed (refused, timed out, closed, a frame too large)."""

    def __init__(self, peer: str, detail: str) -> None:
        self.peer = peer
        self.detail = detail
        super().__init__(f"MLLP {peer}: {detail}")


class FhirError(PumpGwError):
    """A FHIR request or resource that failed; ``detail`` names the element or the HTTP status."""

    def __init__(self, what: str, detail: str, *, status: int | None = None) -> None:
        self.what = what
        self.detail = detail
        self.status = status
        code = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"FHIR {what}{code}: {detail}")
