"""The embedded engine: one process, the bounded-memory SQLite store, the seam per patient.

Rule: memory holds one patient at a time; the stages here (:func:`ingest`,
:func:`settled`, :func:`decide_patients`) are the ones every engine on one machine
shares, so the workers engine differs only in running them on parts of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import date
from pathlib import Path

from ..criteria.relevance import CODED, Relevance
from ..criteria.trial import Trial
from ..decide import Context, Decision, decide
from ..normalise.elements import R4_RESOURCE_TYPES
from ..normalise.resources import unattached_facts
from ..pipeline import Funnel, Screening, _Unattached, partial_input_doubts
from ..quality import DataQuality, add_counters
from ..rank import rank
from ..sources import RawResource, ResourceSource
from ..store import Kept, SqliteStore
from . import ProgressFactory


def no_progress(_: int) -> None:
    return None


def ingest(raws: Iterable[RawResource], relevance: Relevance, store: SqliteStore, unattached):
    """Classify each record once and keep it in the store (or note why it cannot be)."""
    classify, add = relevance.classify, store.add
    for raw in raws:
        wanted = classify(raw.resource)
        if wanted:
            if raw.patient is None:
                unattached.take(raw)
            add(raw, wanted)
        elif raw.unreadable is None and raw.resource["resourceType"] in R4_RESOURCE_TYPES:
            add(raw, 0)
        else:
            unattached.unreadable(raw)


def settled(
    store: SqliteStore,
    quality: DataQuality,
    unattached: list[dict],
    trial: Trial,
    as_of: date,
    base: str | None,
) -> Context:
    """End of input: settle duplicates, note them, and what every patient is decided
    against."""
    store.finish()
    if store.duplicates:
        quality.counts["duplicate-resource"] += store.duplicates
        quality.examples["duplicate-resource"] = [
            {
                "where": "(several files)",
                "message": "the same type and id was read more than once; counted once "
                "(later meta.lastUpdated wins, else the first seen)",
            }
        ]
    for note in store.notes:
        quality.add(note)
    everyone = unattached_facts(unattached, store.medication, base)
    for note in everyone.notes:
        quality.add(note)
    doubts = partial_input_doubts(quality)
    return Context(trial, as_of, base, everyone, doubts, lambda: Funnel(trial))


def decide_patients(
    patients: Iterable[tuple[str, list[Kept]]],
    medications: Callable[[str], dict | None],
    context: Context,
    advance: Callable[[int], None] = no_progress,
) -> Iterator[Decision]:
    """The seam over each patient, in the order given."""
    gate = Relevance(context.trial)
    for patient_id, kept in patients:
        advance(1)
        yield decide(patient_id, kept, medications, context, gate)


def merge_decisions(decisions: Iterable[Decision], funnel: Funnel, quality: DataQuality) -> list:
    """Add decisions (in patient-id order) to the run's funnel (unless their share is
    counted already: None) and notes; the candidates' results."""
    results = []
    for decision in decisions:
        if decision.funnel is not None:
            add_counters(funnel, decision.funnel)
        for note in decision.notes:
            quality.add(note)
        if decision.result is not None:
            results.append(decision.result)
    return results


def base_of(sources: list[ResourceSource]) -> str | None:
    return next((b for s in sources if (b := getattr(s, "base", None))), None)


class Embedded:
    """Today's path: every source read into one store, each patient decided in turn."""

    def screen(
        self,
        sources: Iterable[ResourceSource],
        trial: Trial,
        as_of: date,
        progress: ProgressFactory | None = None,
        workdir: Path | None = None,
        now: float | None = None,
    ) -> Screening:
        sources = list(sources)
        quality, funnel = DataQuality(), Funnel(trial)
        relevance = Relevance(trial)
        retrieval: dict[str, int] = {}
        with SqliteStore(workdir, filtered_types=CODED, now=now) as store:
            unattached = _Unattached(quality, store)
            for source in sources:
                advance = (
                    progress("reading", source.total_work(), source.progress_unit)
                    if progress
                    else no_progress
                )
                ingest(source.read(quality.add, advance), relevance, store, unattached)
                funnel.not_read += source.patients_not_read()
                for key, value in source.stats().items():
                    retrieval[key] = retrieval.get(key, 0) + value
            context = settled(store, quality, unattached.records, trial, as_of, base_of(sources))
            funnel.resources_read = store.resources_by_type
            advance = (
                progress("screening", store.patient_count(), "patients")
                if progress
                else no_progress
            )
            decisions = decide_patients(store.kept_by_patient(), store.medication, context, advance)
            results = merge_decisions(decisions, funnel, quality)
        funnel.finish()
        return Screening(trial, as_of, funnel, quality, rank(results, trial.ranking), retrieval)
