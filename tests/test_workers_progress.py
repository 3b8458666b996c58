"""The workers engine's progress bars move while the workers read and decide (a count
they share), not a part at a time, and add up to the work: every byte of the files,
every patient. Watching them changes no answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_support import AS_OF, NOW, TRIALS, candidates
from engine_support import population as generate

from fhir_cohort.engines import workers as workers_module
from fhir_cohort.engines.workers import Workers, in_order, processes
from fhir_cohort.outputs.candidates import json_bytes
from fhir_cohort.sources.files import FileSource


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pop") / "pop-20"
    return generate(out, 20, 0.3)


class Bars:
    """What a screen shows: each bar's label, total and unit, and the updates it got."""

    def __init__(self):
        self.bars: list[tuple[str, int | None, str, list[int]]] = []

    def start(self, label: str, total: int | None, unit: str):
        updates: list[int] = []
        self.bars.append((label, total, unit, updates))
        return updates.append

    def of(self, label: str) -> tuple[int | None, list[int]]:
        (found,) = [(total, updates) for name, total, _, updates in self.bars if name == label]
        return found


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_the_bars_add_up_to_every_byte_and_every_patient(population, start):
    """Forked workers share the count by inheritance, a fork server's by pickling."""
    bars = Bars()
    run = Workers(2, smallest=1, start=start).screen
    watched = run([FileSource(population)], TRIALS, AS_OF, progress=bars.start, now=NOW)
    size = sum(path.stat().st_size for path in FileSource(population).files)
    assert size > 6_000_000
    total, updates = bars.of("reading")
    assert total == size and sum(updates) == size
    assert all(update > 0 for update in updates)
    total, updates = bars.of("screening")
    patients = sum(1 for line in (population / "Patient.000.ndjson").open() if line.strip())
    assert total == patients and sum(updates) == patients
    assert b"\n".join(json_bytes(s) for s in watched) == candidates(run, population)


def parent(context) -> int | None:
    """The pid a forked worker dies with (a fork server's workers follow it instead)."""
    return os.getpid() if context.get_start_method() == "fork" else None


def _waits_to_be_seen(amount: int) -> bool:
    """A task that reports ``amount`` done, then waits until the parent has shown it."""
    job = workers_module._JOB
    workers_module._shared(job["done"])(amount)
    return job["seen"].wait(timeout=30)


def test_progress_is_shown_while_a_task_is_still_running(monkeypatch):
    """The parent shows what a worker reported before that worker's task ends: here the
    task cannot end until the parent has shown its count (else it times out, False)."""
    monkeypatch.setattr(workers_module, "_TICK", 0.01)
    context = processes()  # forked, unless this process runs threads
    done, seen = context.Value("q", 0), context.Event()
    shown: list[int] = []

    def advance(count: int) -> None:
        shown.append(count)
        if sum(shown) >= 5:
            seen.set()

    job = {"done": done, "seen": seen}
    with workers_module._pool(1, context, job, parent(context)) as pool:
        results = list(in_order(pool, _waits_to_be_seen, [5], done, advance))
    assert results == [True] and sum(shown) == 5


def test_without_a_bar_results_come_in_order():
    context = processes()
    with workers_module._pool(2, context, {}, parent(context)) as pool:
        assert list(in_order(pool, abs, [-3, 2, -1, 0])) == [3, 2, 1, 0]
