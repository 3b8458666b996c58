"""Review decisions: the closed set a coordinator records, and one record of it.

Rule: a decision is a record, never an edit: a newer one (``reopened`` included)
supersedes the one before, and the history keeps both. Nothing here reads the clinical
data, so the command line can offer the choices without loading the criteria engine.
"""

from __future__ import annotations

from dataclasses import dataclass

# The decisions a coordinator records, in the order a case moves; "reopened" undoes the
# one before it (a newer record: the history is never edited).
REVIEW_STATUSES = (
    "contacted",
    "scheduled",
    "screened",
    "declined",
    "not-eligible",
    "enrolled",
    "deferred",
    "reopened",
)
SET_ASIDE = ("declined", "not-eligible")


@dataclass(frozen=True)
class Review:
    """One review decision: who decided what, when, and the evidence then on record."""

    patient: str
    status: str
    note: str
    by: str
    at: str
    evidence_seen: frozenset[str] = frozenset()

    def to_dict(self) -> dict:
        return {
            "patient": self.patient,
            "status": self.status,
            "note": self.note,
            "by": self.by,
            "at": self.at,
        }
