"""The workers engine: every core of one machine, with the embedded engine's answer.

Rule: the results are those of one process, byte for byte. Reading is split into parts
of the files (:meth:`FileSource.parts`: line-aligned byte ranges of each NDJSON file,
other files whole), each read by a worker process into a shard store of its own with
its own notes; the shards are absorbed in source order, so positions, "first seen",
marker ids and the first examples of each note are those of one reader, and the one
duplicate rule then runs over the whole input (the shards' copies the trial cannot use
are first sifted in the workers: only those whose key a kept copy may have go on to
it). Deciding is split by patient: worker ``i`` of ``N`` decides the patients whose
stable hash (:func:`store.partition`) is ``i``; their notes are merged in patient-id
order, and their results go to a listing of the worker's own
(:class:`~fhir_cohort.listing.Listing`), which the parent absorbs. Memory is one part's
batch and one patient per worker. The progress bars move as the workers go (a count
they share, read by the parent while it waits), not a part at a time: a part can be
gigabytes. Input that is not files (a server) is read by the embedded engine, as are
inputs with more records naming no patient than one process keeps. Workers never
outlive the run (a killed run takes them along) and a worker that dies ends the run
with one line, never a wait.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from multiprocessing.context import BaseContext
from pathlib import Path

from ..criteria.language import Trial
from ..criteria.plan import CODED
from ..decide import needs_records
from ..errors import UsageError
from ..listing import Listing
from ..pipeline import MAX_UNATTACHED, Screening, _Unattached, pool_gates
from ..quality import DataQuality
from ..sources import Progress, ProgressStart, ResourceSource
from ..sources.files import MIB, FilePart, FileSource
from ..store import Detached, SqliteStore, StoreReader, sift
from .embedded import (
    Embedded,
    Share,
    base_of,
    decide_share,
    ingest,
    merge_shares,
    no_progress,
    screenings,
    settled,
)


@dataclass
class _Shard:
    """What a worker read from one part of the files."""

    store: Detached
    quality: DataQuality
    unattached: list[dict]


# What a worker's tasks read: set once per worker by :func:`_start` (inherited when the
# pool forks, pickled once per worker under forkserver), never changed by a task.
_JOB: dict = {}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_TICK = 0.25  # seconds between looks at the workers' progress


def _start(job: dict, parent: int | None) -> None:
    """A worker's first act: take the run's job, and end when the run does (``parent``:
    the run's pid when forked from it; None under a fork server, whose own end follows
    the run's)."""
    _JOB.clear()
    _JOB.update(job)
    _die_with_parent(os.getppid() if parent is None else parent)


def _die_with_parent(parent: int) -> None:
    """A worker ends when its parent does, even if the run is killed (SIGKILL): it would
    otherwise go on reading clinical data and hold the state's lock it inherited."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own pipes end the workers
        return
    if os.getppid() != parent:  # the parent died before the call took effect
        os._exit(1)


def processes(start: str | None = None) -> BaseContext:
    """How workers start (``start``: "fork" or "forkserver"; None: the safe one): forked
    when this process runs no other thread (quick, nothing is pickled), else from a fork
    server (a forked copy of a process with threads, such as the workbench or a test
    server, can wait forever on a lock another thread held at the fork)."""
    if start == "fork" or (start is None and threading.active_count() == 1):
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _shared(done) -> Progress:
    """A worker's progress, added to the stage's count (``done``: a shared integer, or
    None when nobody watches)."""
    if done is None:
        return no_progress

    def add(count: int) -> None:
        with done.get_lock():
            done.value += count

    return add


def _read_part(part: FilePart) -> _Shard:
    source: FileSource = _JOB["source"]
    quality = DataQuality()
    store = SqliteStore(_JOB["workdir"], filtered_types=CODED, now=_JOB["now"])
    unattached = _Unattached(quality, store)
    progress = _shared(_JOB.get("done"))
    ingest(source.read_part(part, quality.add, progress), _JOB["gates"], store, unattached)
    return _Shard(store.detach(), quality, unattached.records)


def _sift(folder: Path) -> None:
    sift(folder, _JOB["bits"])


def _decide_part(index: int) -> Share:
    context, gates = _JOB["context"], _JOB["gates"]
    reader = StoreReader(_JOB["store"])
    try:
        patients = reader.kept_by_patient((index, _JOB["parts"]), needs_records(gates))
        advance = _shared(_JOB.get("done"))
        listings = [Listing(trial, _JOB["scratch"]) for trial in context.trials]
        return decide_share(patients, reader.medication, context, gates, advance, listings)
    finally:
        reader.close()


@contextmanager
def _long_lived() -> Iterator[None]:
    """What lives when the run starts (modules, trials) outlives its workers: frozen for
    the run, so no collection walks it, here or in a forked worker, whose copy of those
    pages then stays shared (Python's advice for fork without exec; 2-3 % of a screen of
    2,000 patients on two cores, nothing in one process). Unfrozen after: a long-lived
    process (the workbench, the tests) collects as before. Left alone when something is
    frozen already (a host program's own freeze)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _pool(
    workers: int, context: BaseContext, job: dict, parent: int | None
) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for one stage; a worker that dies (killed by the system, out of
    memory) ends the run with one line rather than leaving it waiting for its part."""
    try:
        with ProcessPoolExecutor(workers, context, _start, (job, parent)) as pool:
            yield pool
    except BrokenProcessPool:
        raise UsageError(
            "a worker process ended before its part was done (killed by the system, "
            "perhaps out of memory); nothing was recorded: run again, with fewer --workers"
        ) from None


def in_order(
    pool: ProcessPoolExecutor,
    task: Callable,
    items: Iterable,
    done=None,
    advance: Progress | None = None,
) -> Iterator:
    """``task`` over ``items`` in the pool, the results in the order of the items. While
    it waits, it shows on ``advance`` what the workers have added to ``done`` (a shared
    integer) since it last looked."""
    futures: list[Future] = [pool.submit(task, item) for item in items]
    shown = 0
    for future in futures:
        if advance is not None and done is not None:
            shown = _watched(future, done, shown, advance)
        yield future.result()


def _bar(
    progress: ProgressStart | None, context: BaseContext, title: str, total: int, unit: str
) -> tuple[Progress | None, object]:
    """A progress bar and the shared count the workers add to (None, None: no progress)."""
    if progress is None:
        return None, None
    return progress(title, total, unit), context.Value("q", 0)


def _watched(future: Future, done, shown: int, advance: Progress) -> int:
    """Wait for ``future``, moving the bar every ``_TICK`` seconds by what the workers
    have added to ``done`` since it showed ``shown``; what it shows after."""
    finished = False
    while not finished:
        finished = bool(wait([future], timeout=_TICK).done)
        now = done.value
        if now > shown:
            advance(now - shown)
            shown = now
    return shown


class Workers:
    """``workers`` processes (default: the number of cores)."""

    def __init__(
        self, workers: int | None = None, smallest: int = 8 * MIB, start: str | None = None
    ):
        """``smallest``: an NDJSON file below this many bytes is one part; ``start``: how
        worker processes start (:func:`processes`)."""
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.smallest, self.start = smallest, start

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
        files = [s for s in sources if type(s) is FileSource and not s.uris]
        if self.workers == 1 or len(files) != len(sources):
            return Embedded().screen(sources, trials, as_of, progress, workdir, now)
        now = time.time() if now is None else now
        # One folder for the run's stores and the workers' shards, removed whatever happens
        # (a full disk in one worker leaves no shard of another behind).
        scratch = Path(tempfile.mkdtemp(prefix="fhir-cohort-workers-", dir=workdir))
        try:
            with _long_lived():
                return self._screen(files, trials, as_of, progress, scratch, now, workdir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _screen(
        self,
        sources: list[FileSource],
        trials: list[Trial],
        as_of: date,
        progress: ProgressStart | None,
        scratch: Path,
        now: float,
        workdir: Path | None,
    ) -> list[Screening]:
        """``scratch``: the run's stores and shards (removed after); ``workdir``: where
        the outcome's listings go (they outlive the run's scratch)."""
        context = processes(self.start)
        parent = os.getpid() if context.get_start_method() == "fork" else None
        quality = DataQuality()
        retrieval: dict[str, int] = {}
        unattached: list[dict] = []
        with SqliteStore(scratch, filtered_types=CODED, now=now) as store:
            gates = pool_gates(trials)
            for source in sources:
                advance, done = _bar(progress, context, "reading", source.total_work(), "B")
                job = {"source": source, "gates": gates, "workdir": scratch, "now": now}
                with _pool(self.workers, context, {**job, "done": done}, parent) as pool:
                    parts = source.parts(self.workers, self.smallest)
                    for shard in in_order(pool, _read_part, parts, done, advance):
                        store.absorb(shard.store)
                        quality = quality.merge(shard.quality)
                        unattached += shard.unattached
                for key, value in source.stats().items():
                    retrieval[key] = retrieval.get(key, 0) + value
            if len(unattached) > MAX_UNATTACHED:  # one reader notes those past the cap
                return Embedded().screen(sources, trials, as_of, progress, workdir, now)
            # The shards' unkept copies that may compete, sifted where the work is parallel.
            with _pool(self.workers, context, {"bits": store.kept_bits()}, parent) as pool:
                list(pool.map(_sift, store.shards()))
            ran = settled(store, quality, unattached, trials, as_of, base_of(sources))
            count = store.patient_count()
            advance, done = _bar(progress, context, "screening", count, "patients")
            job = {"context": ran, "gates": gates, "store": store.path, "parts": self.workers}
            job["scratch"] = scratch  # where the workers' listings go, absorbed after
            with _pool(self.workers, context, {**job, "done": done}, parent) as pool:
                shares = list(in_order(pool, _decide_part, range(self.workers), done, advance))
            read = dict(store.resources_by_type)
        funnels, listings = merge_shares(ran, shares, quality, workdir)
        return screenings(ran, funnels, quality, listings, read, retrieval)
