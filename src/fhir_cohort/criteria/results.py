"""Results: the words and records the engine's answers are given in.

Criterion results are ``met`` / ``not-met`` / ``unknown``; exclusion results
``excluded`` / ``review`` / ``clear``, washouts ``washout`` (with ``until``),
``review`` (a record that cannot be read could start or extend one; ``until``
when a readable one runs) or ``clear``. Every result carries the evidence it rests on. ``to_dict``
gives the JSON shape of ``candidates.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

MET, NOT_MET, UNKNOWN = "met", "not-met", "unknown"
EXCLUDED, REVIEW, CLEAR, WASHOUT = "excluded", "review", "clear", "washout"
ELIGIBLE, NEEDS_REVIEW, NOT_A_CANDIDATE = "eligible", "needs-review", "not-a-candidate"
STATUSES = (ELIGIBLE, WASHOUT, NEEDS_REVIEW, EXCLUDED)


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of evidence: the resource, its code, value and date."""

    resource: str
    date: date | None
    code: str | None = None
    display: str | None = None
    value: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "resource": self.resource,
            "date": _iso(self.date),
            "code": self.code,
            "display": self.display,
            "value": self.value,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """A result with its evidence (a criterion, a descriptor, an exclusion)."""

    result: str
    evidence: tuple[Evidence, ...] = ()
    until: date | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "result": self.result,
            "evidence": [e.to_dict() for e in self.evidence],
        }
        if self.until is not None or self.result == WASHOUT:
            out["until"] = _iso(self.until)
        return out
