"""Engines give the embedded engine's answer byte for byte: the workers engine with its
parts of files and partitions of patients, on the bundled cohort, the messy fixture and a
generated population; counters merge associatively."""

from __future__ import annotations

import gc
import itertools
import os
import threading
from pathlib import Path

import pytest
from engine_support import AS_OF, DATA_SETS, NOW, ROOT, TRIALS, candidates
from engine_support import population as generate
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_cohort.engines import engine
from fhir_cohort.engines.embedded import Embedded
from fhir_cohort.engines.workers import Workers, processes
from fhir_cohort.errors import UsageError
from fhir_cohort.quality import DataQuality, Note
from fhir_cohort.sources.files import FileSource


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    """A small generated population with many lupus patients (about 7 MB)."""
    out = tmp_path_factory.mktemp("pop") / "pop-20"
    return generate(out, 20, 0.3)


@pytest.mark.parametrize("fixture", DATA_SETS)
def test_workers_equal_embedded_on_fixtures(fixture):
    path = ROOT / "fixtures" / fixture
    reference = candidates(Embedded().screen, path)
    assert candidates(engine("embedded").screen, path) == reference
    # Every NDJSON file in two byte ranges, read by two processes.
    assert candidates(Workers(2, smallest=1).screen, path) == reference


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_workers_equal_embedded_on_a_population(population, start):
    """Forked workers (a process running one thread) and workers from a fork server (a
    process with threads: the workbench, a test server) give the same answer."""
    reference = candidates(Embedded().screen, population)
    assert b'"status": "eligible"' in reference
    for workers in (1, 2, 3):
        run = Workers(workers, smallest=1, start=start).screen
        assert candidates(run, population) == reference


def test_workers_freeze_what_lives_only_while_they_run(population, monkeypatch):
    """The objects alive when a run starts are frozen while the workers run (no
    collection walks them, nor copies them into a forked worker) and unfrozen after, even
    when the run fails: a long-lived process collects its garbage as before. A freeze the
    host program made itself is left as it was."""
    frozen = []
    freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (freeze(), frozen.append(gc.get_freeze_count())))
    reference = candidates(Embedded().screen, population)
    assert candidates(Workers(2, smallest=1).screen, population) == reference
    assert len(frozen) == 1 and frozen[0] > 1000 and gc.get_freeze_count() == 0

    def fails(*_):
        assert gc.get_freeze_count() > 1000
        raise UsageError("a full disk")

    with monkeypatch.context() as patch:
        patch.setattr(Workers, "_screen", fails)
        with pytest.raises(UsageError):
            candidates(Workers(2, smallest=1).screen, population)
    assert gc.get_freeze_count() == 0
    freeze()  # the host's own
    try:
        host, freezes = gc.get_freeze_count(), len(frozen)
        assert candidates(Workers(2, smallest=1).screen, population) == reference
        assert gc.get_freeze_count() >= host and len(frozen) == freezes
    finally:
        gc.unfreeze()


def test_a_process_with_threads_starts_workers_from_a_fork_server(population):
    """A thread holding a lock at the fork would leave a forked worker waiting forever;
    with another thread running, workers start from a fork server (and still finish)."""
    release = threading.Event()
    lock = threading.Lock()

    def holder() -> None:
        with lock:
            release.wait(60)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    try:
        assert processes().get_start_method() == "forkserver"
        reference = candidates(Embedded().screen, population)
        assert candidates(Workers(2, smallest=1).screen, population) == reference
    finally:
        release.set()
        thread.join()


def test_parts_cover_every_line_once(population):
    """Byte ranges start at line starts and add up to each file, whatever the count."""
    source = FileSource(population)
    for pieces in (1, 2, 7):
        parts = source.parts(pieces, smallest=1)
        for index, path in enumerate(source.files):
            mine = [p for p in parts if p.index == index]
            data = path.read_bytes()
            if len(mine) == 1 and mine[0].end is None:
                continue
            assert mine[0].start == 0 and mine[-1].end == len(data)
            for before, after in itertools.pairwise(mine):
                assert before.end == after.start and data[after.start - 1 : after.start] == b"\n"


notes = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50)), max_size=40).map(
    lambda pairs: [Note(code, "m", f"f:{n}") for code, n in pairs]
)


@settings(max_examples=60, database=None)
@given(notes, st.lists(st.integers(0, 40), max_size=4))
def test_quality_merges_associatively(all_notes, cuts):
    """Notes split into any parts, merged in order, in any grouping: one reader's result."""
    whole = DataQuality()
    for note in all_notes:
        whole.add(note)
    bounds = [0, *sorted(min(c, len(all_notes)) for c in cuts), len(all_notes)]
    shares = []
    for start, end in itertools.pairwise(bounds):
        share = DataQuality()
        for note in all_notes[start:end]:
            share.add(note)
        shares.append(share)
    left = DataQuality()
    for share in shares:
        left = left.merge(share)
    right = DataQuality()
    for share in reversed(shares):
        right = share.merge(right)
    for merged in (left, right):
        assert merged.counts == whole.counts and merged.examples == whole.examples


def _dies(part) -> None:
    """A worker's reading task that is killed (sent to the worker by name)."""
    os._exit(9)


def test_a_worker_that_dies_ends_the_run_in_one_line(population, monkeypatch, tmp_path):
    """A worker killed mid-part (the system's OOM killer, say) is one clear error and
    leaves no scratch data, never a run waiting forever for its part."""
    import fhir_cohort.engines.workers as engine_module

    monkeypatch.setattr(engine_module, "_read_part", _dies)
    run = Workers(2, smallest=1, start="fork")
    with pytest.raises(UsageError, match="a worker process ended before its part was done"):
        run.screen([FileSource(population)], TRIALS, AS_OF, workdir=tmp_path, now=NOW)
    assert list(tmp_path.iterdir()) == []
