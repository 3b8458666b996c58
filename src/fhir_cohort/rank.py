"""Rank: order evaluated patients into the candidate list coordinators read.

Rule: statuses in the order eligible, washout (soonest ``eligible_from``
first), needs-review, excluded; within a status by a score whose weights come
from the trial definition's ``ranking`` section (README, "How candidates are
ranked"), then by patient id so equal scores always list the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from .criteria.results import STATUSES, UNKNOWN, WASHOUT, PatientResult


@dataclass(frozen=True, slots=True)
class Candidate:
    rank: int
    score: int
    result: PatientResult


def score(result: PatientResult, weights: dict) -> int:
    """More ACR criteria, stronger and more recent activity, fewer unknowns: higher."""
    activity = result.activity
    if activity is None:  # outside the candidate pool: never ranked
        return 0
    total = weights.get("per_acr_criterion", 0) * result.acr.count
    total += weights.get("per_activity_point", 0) * activity.score
    if activity.acute_condition:
        total += weights.get("acute_condition_in_window", 0)
    latest = activity.latest_evidence
    if latest is not None:
        age_days = (result.as_of - latest).days
        bonuses = sorted(
            (int(days), points)
            for days, points in (weights.get("activity_within_days") or {}).items()
        )
        total += next((points for days, points in bonuses if age_days <= days), 0)
    unknown_inclusions = sum(r == UNKNOWN for r in (result.age.result, activity.result))
    total += weights.get("per_unknown_inclusion", 0) * unknown_inclusions
    total += weights.get("per_unknown_acr_criterion", 0) * len(result.acr.unknown)
    return int(total)


def rank(results: list[PatientResult], weights: dict) -> list[Candidate]:
    """The listed candidates, ranked 1..n."""
    order = {status: i for i, status in enumerate(STATUSES)}
    scored = [(score(r, weights), r) for r in results if r.status in order]

    def key(item: tuple[int, PatientResult]):
        points, result = item
        soonest = result.eligible_from if result.status == WASHOUT else None
        return (order[result.status], soonest or date.min, -points, result.patient)

    return [
        Candidate(i, points, result)
        for i, (points, result) in enumerate(sorted(scored, key=key), start=1)
    ]
