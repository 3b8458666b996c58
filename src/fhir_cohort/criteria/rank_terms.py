"""Ranking: the trial's ranking terms, computed from the answers, order the list.

Rule: statuses in the order eligible, washout (soonest ``eligible_from``
first), needs-review, excluded; within a status by the sum of the trial's
ranking terms (each reads a rule's answer by its path: ``age``,
``activity.recent``), then by patient id so equal scores always list the same
way. No term knows a trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from .language import (
    PerMetChild,
    PerScorePoint,
    PerUnknown,
    PerUnknownChild,
    Recency,
    RuleMet,
    Trial,
)
from .results import STATUSES, WASHOUT
from .tree import NodeResult, TrialResult


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int
    score: int
    result: TrialResult


def _nodes(result: TrialResult, paths: list[str]) -> list[NodeResult]:
    return [node for node in map(result.node, paths) if node is not None]


def term_points(term, result: TrialResult) -> int:
    """The points one term gives one patient."""
    if isinstance(term, PerMetChild):
        return term.points * len(_nodes(result, [term.per_met_child])[0].met)
    if isinstance(term, PerScorePoint):
        return term.points * (_nodes(result, [term.per_score_point])[0].score or 0)
    if isinstance(term, RuleMet):
        return term.points if _nodes(result, [term.rule_met])[0].value else 0
    if isinstance(term, PerUnknown):
        return term.points * sum(n.value is None for n in _nodes(result, term.per_unknown))
    if isinstance(term, PerUnknownChild):
        return term.points * len(_nodes(result, [term.per_unknown_child])[0].unknown)
    assert isinstance(term, Recency)
    dates = [d for n in _nodes(result, term.recency) if (d := n.latest_evidence())]
    if not dates:
        return 0
    age_days = (result.as_of - max(dates)).days
    bonuses = sorted(term.within_days.items())
    return next((points for days, points in bonuses if age_days <= days), 0)


def score(result: TrialResult, trial: Trial) -> int:
    """The sum of the trial's ranking terms (0 outside the candidate pool)."""
    if not result.candidate:
        return 0
    return sum(term_points(term, result) for term in trial.spec.ranking)


_ORDER = {status: i for i, status in enumerate(STATUSES)}


def sort_key(result: TrialResult, points: int) -> tuple[int, date, int, str]:
    """Where a listed result ranks, smallest first: its status, the soonest end of a
    washout, the most points, then its patient id."""
    soonest = result.eligible_from if result.status == WASHOUT else None
    return (_ORDER[result.status], soonest or date.min, -points, result.patient)


def rank(results: list[TrialResult], trial: Trial) -> list[Ranked]:
    """The listed candidates, ranked 1..n, in memory: the rule a run's
    :class:`~fhir_cohort.listing.Listing` follows on disk (its tests hold it to this),
    for a screening built from results by hand."""
    scored = [(score(r, trial), r) for r in results if r.status in _ORDER]
    ordered = sorted(scored, key=lambda item: sort_key(item[1], item[0]))
    return [Ranked(i, points, result) for i, (points, result) in enumerate(ordered, start=1)]
