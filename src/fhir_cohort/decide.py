"""The per-patient seam: one pure function decides one patient, in every engine.

Rule: everything that decides one patient happens in :func:`decide`: the pool gate on
the patient's relevance bits, parsing, normalisation (Medications looked up through an
argument, never a database connection of its own), evaluation, the patient's
data-quality notes and their share of the funnel. It reads no file, clock or global,
so the embedded engine, worker processes and Spark executors give the same answer for
the same records.

Its input is one patient's *kept* records (:class:`Kept`): each with its position in
the source order and its relevance bits, in any order (they are put back in source
order, so "first seen" holds in every engine). Copies of one type and id must be
settled first by the store's one duplicate rule (:func:`fhir_cohort.store.settle`),
over the whole input: a newer copy under another patient, or one the trial cannot use,
still retires this patient's, so the rule cannot be applied one patient at a time.

Its output (:class:`Decision`) carries the patient's result (None when not a
candidate), their funnel share and their notes; shares add up associatively
(:func:`fhir_cohort.quality.add_counters`), notes are merged in patient-id order.
The one call into the criteria engine is :func:`_judge`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import orjson

from .criteria.evaluator import evaluate
from .criteria.relevance import Relevance
from .criteria.trial import Trial
from .normalise.facts import PatientFacts
from .normalise.resources import patient_facts, with_unattached
from .quality import Note
from .store import Kept

# Notes the store puts in data_quality once, whoever they concern: not again per patient.
NOTED_BY_STORE = frozenset({"conflicting-duplicate"})


@dataclass(frozen=True)
class Context:
    """What every patient of one run is decided against (the same on every worker)."""

    trial: Trial
    as_of: date
    base: str | None  # the source server's own base URL, for absolute references
    everyone: PatientFacts  # records that name no patient: they weigh on everyone
    doubts: tuple[str, ...]  # input not all read: a doubt on every candidate
    new_funnel: Callable[[], Any]  # an empty funnel share (has count / count_outside_pool)


@dataclass(frozen=True)
class Decision:
    """One patient's answer: their result if a candidate, their funnel share, their notes."""

    patient_id: str
    result: Any  # the criteria engine's result, only for a candidate (else None)
    funnel: Any
    notes: tuple[Note, ...]


def _judge(facts: PatientFacts, trial: Trial, as_of: date):
    """The one call into the criteria engine."""
    return evaluate(facts, trial, as_of)


def decide(
    patient_id: str,
    kept: Iterable[Kept],
    medications: Callable[[str], dict | None],
    context: Context,
    gate: Relevance,
) -> Decision:
    """Decide one patient from their settled kept records.

    ``medications`` looks a Medication up by id (a dict's ``get``, a broadcast table's,
    the store's); ``gate`` is ``Relevance(context.trial)``, built once per worker (it
    memoises codes).
    """
    records = sorted(kept, key=lambda k: k.position)
    funnel = context.new_funnel()
    touches = 0
    for record in records:
        touches |= record.touches
    if not gate.may_be_candidate(touches):
        funnel.count_outside_pool()
        return Decision(patient_id, None, funnel, ())
    resources = [orjson.loads(record.body) for record in records]
    facts = patient_facts(patient_id, resources, medications, context.base)
    if context.doubts:
        facts = replace(facts, doubts=facts.doubts + context.doubts)
    result = _judge(with_unattached(facts, context.everyone), context.trial, context.as_of)
    funnel.count(result)
    notes = tuple(note for note in result.notes if note.code not in NOTED_BY_STORE)
    return Decision(patient_id, result if result.candidate else None, funnel, notes)
