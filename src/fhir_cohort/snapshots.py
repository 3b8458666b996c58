"""Snapshots: what the history keeps of a candidate to compare with the next run.

Rule: a snapshot is a small JSON-able dict made from one result alone (status, dates,
each inclusion's result, flags and the evidence on record, keyed by the record it comes
from), so it can be made where the result is decided and compared anywhere
(:mod:`fhir_cohort.changes`).
"""

from __future__ import annotations

from collections.abc import Callable

from .criteria.rank_terms import Ranked
from .criteria.results import WASHOUT, Evidence
from .criteria.tree import NodeResult, TrialResult


def evidence_key(resource: str) -> str:
    """The identity of one piece of evidence: the record it comes from.

    Not its date or the evaluator's wording of it: an ongoing medication is
    dated as of the run and reads "last exposure ..." once it has ended, and a
    record is not new because a later run looks at it.

    >>> evidence_key("Observation/o1")
    'Observation/o1'
    """
    return resource


def _label(e: Evidence) -> str:
    day = e.date.isoformat() if e.date else None
    parts = (e.display or e.code, e.value, day if day and day not in (e.value or "") else None)
    return " ".join(part for part in parts if part) + f" ({e.resource})"


def _node_evidence(node: NodeResult) -> list[Evidence]:
    """The evidence of a rule and of its named sub-rules (not the patient's age)."""
    if node.kind == "age":
        return []
    return [*node.evidence, *(e for part in node.parts if part.id for e in _node_evidence(part))]


def evidence_items(result: TrialResult) -> dict[str, str]:
    """Every piece of clinical evidence behind a result (not age), keyed, with a label."""
    evidence = [e for node in result.inclusions.values() for e in _node_evidence(node)]
    evidence += [e for finding in result.exclusions.values() for e in finding.evidence]
    return {evidence_key(e.resource): _label(e) for e in evidence}


def flags(result: TrialResult, name: Callable[[str], str] = str, age_joint: str = " ") -> list[str]:
    """An age outside the range and exclusions that are not clear, as short phrases.

    ``name`` turns an id into words: the history keeps ids (``biologic_washout until
    2026-08-28``), so snapshots compare across runs; the outputs pass the trial's labels.
    """
    out = []
    for key, node in result.inclusions.items():
        if node.value is False and node.kind == "age":
            out.append(f"{name(key)}{age_joint}{node.shown} outside the trial's range")
    for key, finding in result.exclusions.items():
        if finding.result == WASHOUT and finding.until:
            out.append(f"{name(key)} until {finding.until.isoformat()}")
        elif finding.result != "clear":
            out.append(f"{name(key)}: {finding.result}")
    return out


def snapshot(candidate: Ranked) -> dict:
    """What the history keeps to compare a candidate with the next run: each inclusion's
    result, and for an ``at_least`` how many of its criteria are met."""
    return result_snapshot(candidate.result, candidate.rank)


def result_snapshot(result: TrialResult, rank: int | None) -> dict:
    """:func:`snapshot` of a result whose rank is ``rank`` (None: not known yet; the
    field keeps its place, to be set once it is)."""
    return {
        "name": result.name,
        "status": result.status,
        "eligible_from": result.eligible_from.isoformat() if result.eligible_from else None,
        "rank": rank,
        "criteria": {key: node.result for key, node in result.inclusions.items()},
        "met": {
            key: len(node.met) for key, node in result.inclusions.items() if node.kind == "at_least"
        },
        "flags": flags(result),
        "evidence": evidence_items(result),
    }
