"""The workers engine: every core of one machine, with the embedded engine's answer.

Rule: the results are those of one process, byte for byte. Reading is split into parts
of the files (:meth:`FileSource.parts`: line-aligned byte ranges of each NDJSON file,
other files whole), each read by a worker process into a shard store of its own with
its own notes; the shards are absorbed in source order, so positions, "first seen",
marker ids and the first examples of each note are those of one reader, and the one
duplicate rule then runs over the whole input. Deciding is split by patient: worker
``i`` of ``N`` decides the patients whose stable hash (:func:`store.partition`) is
``i``; their notes are merged in patient-id order. Memory is one part's batch and one
patient per worker. Input that is not files (a server) is read by the embedded engine,
as are inputs with more records naming no patient than one process keeps.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..criteria.relevance import CODED, Relevance
from ..criteria.trial import Trial
from ..decide import Context, Decision
from ..pipeline import MAX_UNATTACHED, Funnel, Screening, _Unattached
from ..quality import DataQuality, add_counters
from ..rank import rank
from ..sources import ResourceSource
from ..sources.files import MIB, FilePart, FileSource
from ..store import SqliteStore, StoreReader
from . import ProgressFactory
from .embedded import (
    Embedded,
    base_of,
    decide_patients,
    ingest,
    merge_decisions,
    no_progress,
    settled,
)


@dataclass
class _Shard:
    """What a worker read from one part of the files."""

    folder: Path
    used: int  # positions the shard's store took
    quality: DataQuality
    unattached: list[dict]
    resources_by_type: dict[str, int]
    kept: int
    size: int  # bytes of the part, for the progress bar


@dataclass
class _Part:
    """What a worker decided for its share of the patients."""

    funnel: Funnel
    decisions: list[Decision]  # patients evaluated (past the gate), with their notes


# Set in the parent before the pool forks; the children read it (nothing is pickled).
_JOB: dict = {}


def _read_part(part: FilePart) -> _Shard:
    source: FileSource = _JOB["source"]
    quality = DataQuality()
    store = SqliteStore(_JOB["workdir"], filtered_types=CODED, now=_JOB["now"])
    unattached = _Unattached(quality, store)
    ingest(source.read_part(part, quality.add, no_progress), _JOB["relevance"], store, unattached)
    folder, used = store.detach()
    end = part.end if part.end is not None else part.path.stat().st_size
    return _Shard(
        folder,
        used,
        quality,
        unattached.records,
        store.resources_by_type,
        store.kept,
        end - part.start,
    )


def _decide_part(index: int) -> _Part:
    context: Context = _JOB["context"]
    reader = StoreReader(_JOB["store"])
    funnel = Funnel(context.trial)
    decisions = []
    try:
        for decision in decide_patients(
            reader.kept_by_patient((index, _JOB["parts"])), reader.medication, context
        ):
            add_counters(funnel, decision.funnel)
            if decision.notes or decision.result is not None:
                decisions.append(
                    Decision(decision.patient_id, decision.result, None, decision.notes)
                )
    finally:
        reader.close()
    funnel.trial = None  # type: ignore[assignment]  # the parent has it; not sent back
    return _Part(funnel, decisions)


class Workers:
    """``workers`` processes (default: the number of cores)."""

    def __init__(self, workers: int | None = None, smallest: int = 8 * MIB):
        """``smallest``: an NDJSON file below this many bytes is one part."""
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.smallest = smallest

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
        if not all(type(s) is FileSource for s in sources):
            return Embedded().screen(sources, trial, as_of, progress, workdir, now)
        context = multiprocessing.get_context("fork")
        now = time.time() if now is None else now
        quality, funnel = DataQuality(), Funnel(trial)
        retrieval: dict[str, int] = {}
        unattached: list[dict] = []
        with SqliteStore(workdir, filtered_types=CODED, now=now) as store:
            _JOB.update(relevance=Relevance(trial), workdir=workdir, now=now)
            try:
                for source in sources:
                    advance = progress("reading", source.total_work(), "B") if progress else None
                    _JOB["source"] = source
                    with context.Pool(self.workers) as pool:
                        for shard in pool.imap(
                            _read_part, source.parts(self.workers, self.smallest)
                        ):
                            store.absorb(shard.folder, shard.used)
                            for kind, count in shard.resources_by_type.items():
                                found = store.resources_by_type.get(kind, 0)
                                store.resources_by_type[kind] = found + count
                            store.kept += shard.kept
                            quality = quality.merge(shard.quality)
                            unattached += shard.unattached
                            if advance:
                                advance(shard.size)
                    for key, value in source.stats().items():
                        retrieval[key] = retrieval.get(key, 0) + value
                if len(unattached) > MAX_UNATTACHED:  # one reader notes those past the cap
                    return Embedded().screen(sources, trial, as_of, progress, workdir, now)
                ran = settled(store, quality, unattached, trial, as_of, base_of(sources))
                funnel.resources_read = store.resources_by_type
                _JOB.update(context=ran, store=store.path, parts=self.workers)
                with context.Pool(self.workers) as pool:
                    parts = pool.map(_decide_part, range(self.workers))
            finally:
                _JOB.clear()
        decisions = []
        for part in parts:
            add_counters(funnel, part.funnel)
            decisions += part.decisions
        decisions.sort(key=lambda d: d.patient_id)
        results = merge_decisions(decisions, funnel, quality)
        funnel.finish()
        return Screening(trial, as_of, funnel, quality, rank(results, trial.ranking), retrieval)
