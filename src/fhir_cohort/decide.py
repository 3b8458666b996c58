"""The per-patient seam: one pure function decides one patient, in every engine.

Rule: everything that decides one patient happens in :func:`decide`: the pool gate on
the patient's relevance bits (each trial's own), parsing, normalisation (Medications
looked up through an argument, never a database connection of its own), evaluation
against every trial screened, the patient's data-quality notes and their share of each
trial's funnel. It reads no file, clock or global, so the embedded engine, worker
processes and Spark executors give the same answer for the same records.

Its input is one patient's *kept* records (:class:`~fhir_cohort.store.Kept`): each with
its position in the source order and its relevance bits, in any order (they are put
back in source order, so "first seen" holds in every engine). For a patient in no
trial's pool (:func:`needs_records` says so from the bits alone) a store may hand one
record that stands for all theirs, with the bits and no body: nothing else is read.
Copies of one type and id must be settled first by the store's one duplicate rule
(:func:`fhir_cohort.store.settle`), over the whole input: a newer copy under another
patient, or one the trial cannot use, still retires this patient's, so the rule cannot
be applied one patient at a time.

Its output (:class:`Decision`) carries the patient's result in each trial (None where
not a candidate), their funnel shares and their notes; shares add up associatively
(:func:`fhir_cohort.quality.add_counters`), notes are merged in patient-id order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date

from .criteria.funnel import TrialFunnel
from .criteria.language import Trial
from .criteria.plan import TrialGates
from .criteria.tree import TrialResult, evaluate
from .normalise.facts import PatientFacts
from .normalise.resources import patient_facts, with_unattached
from .quality import Note
from .store import Kept

# Notes the store puts in data_quality once, whoever they concern: not again per patient.
NOTED_BY_STORE = frozenset({"conflicting-duplicate"})


@dataclass(frozen=True)
class Context:
    """What every patient of one run is decided against (the same on every worker)."""

    trials: tuple[Trial, ...]
    as_of: date
    base: str | None  # the source server's own base URL, for absolute references
    everyone: PatientFacts  # records that name no patient: they weigh on everyone
    doubts: tuple[str, ...]  # input not all read: a doubt on every candidate

    def funnels(self) -> list[TrialFunnel]:
        """Empty funnel shares, one per trial."""
        return [TrialFunnel(trial) for trial in self.trials]


@dataclass(frozen=True)
class Decision:
    """One patient's answer: their result in each trial where a candidate (else None),
    their funnel shares (None once added elsewhere) and their notes."""

    patient_id: str
    results: tuple[TrialResult | None, ...]
    funnels: list[TrialFunnel] | None
    notes: tuple[Note, ...]

    def slim(self) -> Decision | None:
        """What a worker sends back once it has added the funnel shares itself: the
        results and notes, or None when there are neither."""
        if not self.notes and not any(self.results):
            return None
        return Decision(self.patient_id, self.results, None, self.notes)


def pools(gates: TrialGates, touches: int) -> list[int]:
    """The trials (by index, one gate each) whose candidate pool a patient may be in,
    from their records' relevance bits OR-ed: the only trials their records are read for."""
    return [i for i in range(len(gates.gates)) if gates.may_be_candidate(i, touches)]


def needs_records(gates: TrialGates) -> Callable[[int], bool]:
    """Does deciding a patient whose records' bits OR to ``touches`` read the records?
    (A store asked this reads only those patients' bodies.)"""
    return lambda touches: bool(pools(gates, touches))


def decide(
    patient_id: str,
    kept: Iterable[Kept],
    medications: Callable[[str], dict | None],
    context: Context,
    gates: TrialGates,
) -> Decision:
    """Decide one patient from their settled kept records, for every trial.

    ``medications`` looks a Medication up by id (a dict's ``get``, a broadcast table's,
    the store's); ``gates`` is the trials' pool gates, built once per worker (they
    memoise codes).
    """
    records = sorted(kept, key=lambda k: k.position)
    funnels = context.funnels()
    touches = 0
    for record in records:
        touches |= record.touches
    results: list[TrialResult | None] = [None] * len(context.trials)
    wanted = pools(gates, touches)
    for i, funnel in enumerate(funnels):
        if i not in wanted:
            funnel.count_outside_pool()
    if not wanted:
        return Decision(patient_id, tuple(results), funnels, ())
    resources = []
    for record in records:
        if record.body is None:  # the engine's store was told the patient needs no records
            raise RuntimeError(f"the records of patient {patient_id} were not read")
        resources.append(record.body)  # parsed as it is normalised
    facts = patient_facts(patient_id, resources, medications, context.base)
    if context.doubts:
        facts = replace(facts, doubts=facts.doubts + context.doubts)
    facts = with_unattached(facts, context.everyone)
    found: list[Note] = []
    for i in wanted:
        result = evaluate(facts, context.trials[i], context.as_of)
        funnels[i].count(result)
        found += [n for n in result.notes if n not in found]
        if result.candidate:
            results[i] = result
    notes = tuple(note for note in found if note.code not in NOTED_BY_STORE)
    return Decision(patient_id, tuple(results), funnels, notes)
