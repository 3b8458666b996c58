"""Benchmark: both bundled trials screened in one pass against two separate runs.

    python bench/two_trials.py --data bench/data/pop-2000 --repeat 3 --json out.json

Reading is the expensive part of a screen (docs/benchmark.md), so several trials read
the data once (``Embedded().screen`` with both): the store keeps the union of what the trials
read, and each patient's facts are built once and evaluated per trial. This script
times, in one process, on the same NDJSON folder:

* one pass - ``Embedded().screen([FileSource(path)], [misle, surpass2], D)``;
* two runs - ``screen([FileSource(path)], misle, D)`` then the same for surpass2;

each the best of ``--repeat`` runs, alternating the two so that a busy machine weighs on
both alike: wall clock (``time.perf_counter``) and this process's CPU time
(``time.process_time``, which other processes on a shared machine do not inflate). It
checks that both ways give the same candidates.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

from fhir_cohort.criteria.language import load
from fhir_cohort.engines.embedded import Embedded, screen
from fhir_cohort.outputs.candidates import candidate_dict
from fhir_cohort.pipeline import Screening
from fhir_cohort.sources.files import FileSource

AS_OF = date(2026, 6, 30)
TRIALS = ("misle", "surpass2")


def listed(screening: Screening) -> list[dict]:
    return [{**candidate_dict(c), "notes": None} for c in screening.candidates]


def timed(run) -> tuple[float, float, list[Screening]]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    found = run()
    return time.perf_counter() - wall, time.process_time() - cpu, found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a population folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way (best kept)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    trials = [load(name) for name in TRIALS]

    def one_pass() -> list[Screening]:
        return Embedded().screen([FileSource(args.data)], trials, AS_OF)

    def two_runs() -> list[Screening]:
        return [screen([FileSource(args.data)], trial, AS_OF) for trial in trials]

    wall: dict[str, list[float]] = {"one pass": [], "two runs": []}
    cpu: dict[str, list[float]] = {"one pass": [], "two runs": []}
    answers = {}
    for _ in range(args.repeat):
        for name, run in (("one pass", one_pass), ("two runs", two_runs)):
            seconds, used, found = timed(run)
            wall[name].append(seconds)
            cpu[name].append(used)
            answers[name] = [listed(s) for s in found]
    assert answers["one pass"] == answers["two runs"], "the two ways disagree"
    best = {name: min(values) for name, values in wall.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    result = {
        "data": str(args.data),
        "trials": list(TRIALS),
        "candidates": {t: len(a) for t, a in zip(TRIALS, answers["one pass"], strict=True)},
        "wall_seconds": {name: [round(t, 2) for t in values] for name, values in wall.items()},
        "cpu_seconds": {name: [round(t, 2) for t in values] for name, values in cpu.items()},
        "best_wall": {name: round(t, 2) for name, t in best.items()},
        "best_cpu": {name: round(t, 2) for name, t in best_cpu.items()},
        "ratio_wall": round(best["two runs"] / best["one pass"], 2),
        "ratio_cpu": round(best_cpu["two runs"] / best_cpu["one pass"], 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
