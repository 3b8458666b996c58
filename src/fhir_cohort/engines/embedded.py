"""The embedded engine: one process, the bounded-memory SQLite store, the seam per patient.

Rule: memory holds one patient at a time; the stages here (:func:`ingest`,
:func:`settled`, :func:`decide_patients`, :func:`merge_decisions`,
:func:`screenings`) are the ones every engine shares, so the others differ only in
running them on parts of the input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path

from ..criteria.funnel import TrialFunnel
from ..criteria.language import Trial
from ..criteria.plan import CODED, TrialGates
from ..decide import Context, Decision, decide, needs_records
from ..listing import Listing
from ..normalise.elements import R4_RESOURCE_TYPES
from ..normalise.resources import unattached_facts
from ..pipeline import Screening, _Unattached, partial_input_doubts, pool_gates
from ..quality import DataQuality, add_counters
from ..sources import ProgressStart, RawResource, ResourceSource
from ..store import Kept, SqliteStore

DUPLICATES_EXAMPLE = {
    "where": "(several files)",
    "message": "the same type and id was read more than once; counted once "
    "(later meta.lastUpdated wins, else the first seen)",
}


def no_progress(_: int) -> None:
    return None


def ingest(
    raws: Iterable[RawResource], gates: TrialGates, store: SqliteStore, unattached: _Unattached
) -> None:
    """Classify each record once and keep it in the store (or note why it cannot be)."""
    classify, add = gates.classify, store.add
    for raw in raws:
        mask = classify(raw.resource)
        if mask:
            if raw.patient is None:
                unattached.take(raw)
            add(raw, mask)
        elif raw.unreadable is None and raw.resource["resourceType"] in R4_RESOURCE_TYPES:
            add(raw, 0)
        else:
            unattached.unreadable(raw)


def note_duplicates(quality: DataQuality, duplicates: int) -> None:
    """Copies counted once, in data_quality (one example: they are many by nature)."""
    if duplicates:
        quality.counts["duplicate-resource"] += duplicates
        quality.examples["duplicate-resource"] = [dict(DUPLICATES_EXAMPLE)]


def context_for(
    trials: list[Trial],
    as_of: date,
    base: str | None,
    unattached: list[dict],
    medications: Callable[[str], dict | None],
    quality: DataQuality,
) -> Context:
    """What every patient is decided against, once the input is read and settled (the
    records naming nobody weigh on everyone; input not all read doubts everyone)."""
    everyone = unattached_facts(unattached, medications, base)
    for note in everyone.notes:
        quality.add(note)
    return Context(tuple(trials), as_of, base, everyone, partial_input_doubts(quality))


def settled(
    store: SqliteStore,
    quality: DataQuality,
    unattached: list[dict],
    trials: list[Trial],
    as_of: date,
    base: str | None,
) -> Context:
    """End of input: settle duplicates, note them, and what every patient is decided
    against."""
    store.finish()
    note_duplicates(quality, store.duplicates)
    for note in store.notes:
        quality.add(note)
    return context_for(trials, as_of, base, unattached, store.medication, quality)


def decide_patients(
    patients: Iterable[tuple[str, list[Kept]]],
    medications: Callable[[str], dict | None],
    context: Context,
    gates: TrialGates,
    advance: Callable[[int], object] = no_progress,
) -> Iterator[Decision]:
    """The seam over each patient, in the order given (``gates``: the trials' pool gates,
    built once per process; they memoise)."""
    for patient_id, kept in patients:
        advance(1)
        yield decide(patient_id, kept, medications, context, gates)


# A share of the patients decided: its funnel counts, its decisions worth sending back,
# and the files of the listings its results went to (none: the results are in the
# decisions).
Share = tuple[list[TrialFunnel], list[Decision], list[Path]]


def decide_share(
    patients: Iterable[tuple[str, list[Kept]]],
    medications: Callable[[str], dict | None],
    context: Context,
    gates: TrialGates,
    advance: Callable[[int], object] = no_progress,
    listings: list[Listing] | None = None,
) -> Share:
    """Decide a share of the patients (a worker's partition, a Spark partition): their
    funnel counts added up, without the trials (the caller has them), and the decisions
    worth sending back (a result or a note). With ``listings`` (a worker's, one per
    trial), the results go there as they are decided and the decisions keep only notes,
    so a share holds nothing per candidate; the listings come back detached."""
    funnels = context.funnels()
    decisions = []
    none = (None,) * len(funnels)
    for decision in decide_patients(patients, medications, context, gates, advance):
        for funnel, mine in zip(funnels, decision.funnels or (), strict=True):
            add_counters(funnel, mine)
        if listings is not None:
            _list(listings, decision)
            decision = Decision(decision.patient_id, none, decision.funnels, decision.notes)
        if (slim := decision.slim()) is not None:
            decisions.append(slim)
    for funnel in funnels:
        funnel.trial = None  # type: ignore[assignment]
    return funnels, decisions, [listing.detach() for listing in listings or ()]


def merge_shares(
    context: Context, shares: Iterable[Share], quality: DataQuality, workdir: Path | None
) -> tuple[list[TrialFunnel], list[Listing]]:
    """The run's funnels and each trial's listing from the shares, in any order (the
    decisions are merged in patient-id order, so notes come as one process gives them)."""
    funnels = context.funnels()
    listings = listings_for(context, workdir)
    decisions: list[Decision] = []
    for counted, decided, listed in shares:
        for funnel, share in zip(funnels, counted, strict=True):
            add_counters(funnel, share)
        if listed:  # a worker's listings (Spark's results come in its decisions)
            for listing, path in zip(listings, listed, strict=True):
                listing.absorb(path)
        decisions += decided
    decisions.sort(key=lambda d: d.patient_id)
    merge_decisions(decisions, funnels, quality, listings)
    return funnels, listings


def listings_for(context: Context, workdir: Path | None) -> list[Listing]:
    """An empty listing for each trial, in ``workdir`` (None: the system's temporary
    folder); each removes itself when the run's outcome is dropped."""
    return [Listing(trial, workdir) for trial in context.trials]


def merge_decisions(
    decisions: Iterable[Decision],
    funnels: list[TrialFunnel],
    quality: DataQuality,
    listings: list[Listing],
) -> None:
    """Add decisions (in patient-id order) to the run's funnels (unless their shares are
    counted already: None), notes and each trial's listing."""
    for decision in decisions:
        if decision.funnels is not None:
            for funnel, share in zip(funnels, decision.funnels, strict=True):
                add_counters(funnel, share)
        for note in decision.notes:
            quality.add(note)
        _list(listings, decision)


def _list(listings: list[Listing], decision: Decision) -> None:
    """A decision's results, each in its trial's listing (None: not a candidate there)."""
    for listing, result in zip(listings, decision.results, strict=True):
        if result is not None:
            listing.add(result)


def screenings(
    context: Context,
    funnels: list[TrialFunnel],
    quality: DataQuality,
    listings: list[Listing],
    read: dict[str, int],
    retrieval: dict[str, int],
    plan: dict | None = None,
    not_read: int = 0,
) -> list[Screening]:
    """Each trial's outcome from the merged shares (``read``: resources by type)."""
    out = []
    for trial, funnel, listing in zip(context.trials, funnels, listings, strict=True):
        funnel.resources_read = dict(read)
        funnel.count_outside_pool(not_read)
        screening = Screening(
            trial, context.as_of, funnel, quality, listing.ranked(), dict(retrieval), plan
        )
        out.append(screening)
    return out


def base_of(sources: Sequence[ResourceSource]) -> str | None:
    return next((b for s in sources if (b := getattr(s, "base", None))), None)


class Embedded:
    """Every source read into one store, each patient decided in turn."""

    def screen(
        self,
        sources: Iterable[ResourceSource],
        trials: list[Trial],
        as_of: date,
        progress: ProgressStart | None = None,
        workdir: Path | None = None,
        now: float | None = None,
    ) -> list[Screening]:
        sources = list(sources)
        quality = DataQuality()
        gates = pool_gates(trials)
        retrieval: Counter = Counter()
        plan = None
        not_read = 0
        with SqliteStore(workdir, filtered_types=CODED, now=now) as store:
            unattached = _Unattached(quality, store)
            for source in sources:
                advance = (
                    progress("reading", source.total_work(), source.progress_unit)
                    if progress
                    else no_progress
                )
                ingest(source.read(quality.add, advance), gates, store, unattached)
                not_read += source.patients_not_read()
                retrieval.update(source.stats())
                plan = getattr(source, "retrieval_plan", None)
            context = settled(store, quality, unattached.records, trials, as_of, base_of(sources))
            advance = (
                progress("screening", store.patient_count(), "patients")
                if progress
                else no_progress
            )
            funnels = context.funnels()
            patients = store.kept_by_patient(needed=needs_records(gates))
            decisions = decide_patients(patients, store.medication, context, gates, advance)
            listings = listings_for(context, workdir)
            merge_decisions(decisions, funnels, quality, listings)
            read = dict(store.resources_by_type)
        return screenings(
            context,
            funnels,
            quality,
            listings,
            read,
            dict(retrieval),
            plan() if plan else None,
            not_read,
        )


def screen(
    sources: Iterable[ResourceSource],
    trial: Trial,
    as_of: date,
    progress: ProgressStart | None = None,
    workdir: Path | None = None,
    now: float | None = None,
) -> Screening:
    """Screen every patient in ``sources`` for one ``trial``, in this process (the
    library's plain entry point; :class:`~fhir_cohort.engines.Engine` says the rest)."""
    return Embedded().screen(sources, [trial], as_of, progress, workdir, now)[0]
