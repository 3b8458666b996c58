"""Results: what the evaluator says about one patient, with its evidence.

Criterion results are ``met`` / ``not-met`` / ``unknown``; exclusion results
``excluded`` / ``review`` / ``clear``, washouts ``washout`` (with ``until``),
``review`` (a record that cannot be read could start or extend one; ``until``
when a readable one runs) or ``clear``. Every result carries the evidence it rests on. ``to_dict``
gives the JSON shape of ``candidates.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from ..quality import Note

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
        out = {"result": self.result, "evidence": [e.to_dict() for e in self.evidence]}
        if self.until is not None or self.result == WASHOUT:
            out["until"] = _iso(self.until)
        return out


@dataclass(frozen=True, slots=True)
class AgeResult:
    result: str
    age: int | None
    evidence: tuple[Evidence, ...] = ()

    def to_dict(self) -> dict:
        return {
            "result": self.result,
            "value": self.age,
            "evidence": [e.to_dict() for e in self.evidence],
        }


@dataclass(frozen=True, slots=True)
class AcrResult:
    result: str
    met: tuple[str, ...]
    criteria: dict[str, Finding]

    @property
    def count(self) -> int:
        return len(self.met)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(k for k, f in self.criteria.items() if f.result == UNKNOWN)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(k for k, f in self.criteria.items() if f.result != MET)

    def to_dict(self) -> dict:
        met_evidence = [e.to_dict() for k in self.met for e in self.criteria[k].evidence]
        return {
            "result": self.result,
            "count": self.count,
            "met": list(self.met),
            "missing": list(self.missing),
            "evidence": met_evidence,
            "criteria": {k: f.to_dict() for k, f in self.criteria.items()},
        }


@dataclass(frozen=True, slots=True)
class ActivityResult:
    result: str
    score: int
    window_start: date
    window_end: date
    descriptors: dict[str, Finding]
    weights: dict[str, int]
    acute_condition: tuple[Evidence, ...] = ()

    @property
    def evidence(self) -> tuple[Evidence, ...]:
        found = [e for f in self.descriptors.values() if f.result == MET for e in f.evidence]
        return (*self.acute_condition, *found)

    @property
    def latest_evidence(self) -> date | None:
        return max((e.date for e in self.evidence if e.date), default=None)

    def to_dict(self) -> dict:
        return {
            "result": self.result,
            "score": self.score,
            "window": {"from": _iso(self.window_start), "to": _iso(self.window_end)},
            "evidence": [e.to_dict() for e in self.evidence],
            "descriptors": {
                k: {"weight": self.weights[k], **f.to_dict()} for k, f in self.descriptors.items()
            },
        }


@dataclass(frozen=True, slots=True)
class PatientResult:
    """Everything decided about one patient at one as-of date."""

    patient: str
    name: str | None
    as_of: date
    candidate: bool
    status: str
    eligible_from: date | None
    age: AgeResult
    acr: AcrResult
    activity: ActivityResult | None  # None for a patient outside the candidate pool
    exclusions: dict[str, Finding]  # empty outside the candidate pool
    notes: tuple[Note, ...] = field(default=())
    reasons: tuple[str, ...] = ()  # why a needs-review patient needs review, in plain words
    doubted: bool = False  # records that cannot be read stopped a better status

    def to_dict(self) -> dict:
        return {
            "patient": self.patient,
            "name": self.name,
            "status": self.status,
            "eligible_from": _iso(self.eligible_from),
            "age": self.age.age,
            "criteria": {
                "age": self.age.to_dict(),
                "acr": self.acr.to_dict(),
                "activity": self.activity.to_dict() if self.activity else None,
            },
            "exclusions": {k: f.to_dict() for k, f in self.exclusions.items()},
            "reasons": list(self.reasons),
            "notes": [
                {"code": n.code, "where": n.where, "message": n.message}
                for n in dict.fromkeys(self.notes)
            ],
        }
