"""Benchmark: the engines end to end from the command line, against a bare parse.

    python bench/scale.py --data bench/data/pop-2000 --data bench/data/pop-10000 \
        --json bench/data/scale.json [--spark] [--repeat 2] [--trial surpass2]

For each ``--data`` folder, in this one script run (so the ratios share the machine's
load): the bare single-threaded parse (every NDJSON line through ``orjson.loads``,
bench/run.py's ``bare_parse``), then ``fhir-cohort screen --source DATA`` as a
subprocess with each setting (the default, one worker per core; ``--workers 1``,
which is the embedded engine; ``--workers 2``; with ``--spark``, ``--engine spark
--spark-master local[2]``), screening ``--trial`` (default MiSLE, a rare disease with a
few candidates; SURPASS-2, a common one, lists about half the population), each the
best of ``--repeat`` wall-clock runs (taken in rounds: each round runs the bare
parse and every setting once, so the VM's drift in speed falls on all of them alike;
the median is kept too), with the peak RSS of the largest process
(the CLI or one worker; ``wait4``'s ``ru_maxrss``) and the CPU seconds of the whole
process tree (a figure the machine's load moves less than wall time). The load average
is recorded before and after: on a shared machine the numbers move with it. Each run's
candidates.json (without ``generator``) is compared with the first: all must agree.
Also printed: how much faster ``--workers 2`` (and the default) is than ``--workers 1``
(from the best times, and round by round with the median: a round's settings ran
minutes apart, under much the same load), against the machine's own ceiling: each round
also runs two bare parses at once (forked), and twice the time of one alone over the
time of the pair is what two processes gain on work with nothing serial and nothing
shared (on two cores of a VM, less than 2x: the cores share caches, memory bandwidth
and a host).
First, the median time of ``fhir-cohort --help`` (start-up).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import bare_parse  # bench/run.py: the same floor as the main benchmark

import fhir_cohort

SETTINGS = {
    "default": [],  # the workers engine, one process per core
    "workers 1": ["--workers", "1"],  # the embedded engine
    "workers 2": ["--workers", "2"],
}
SPARK = {"spark local[2]": ["--engine", "spark", "--spark-master", "local[2]"]}


def cli_run(data: Path, options: list[str], trial: str) -> tuple[float, int, bytes, float]:
    """Seconds, peak RSS (bytes) of the largest process, candidates.json minus metadata,
    CPU seconds of the whole process tree (user + system)."""
    with tempfile.TemporaryDirectory() as folder:
        out, state = Path(folder) / "out", Path(folder) / "state"
        command = [sys.executable, "-m", "fhir_cohort.cli", "screen", "--source", str(data)]
        command += ["--as-of", "2026-06-30", "--out", str(out), "--state", str(state)]
        command += ["--trial", trial]
        started = time.perf_counter()
        child = subprocess.Popen([*command, "--quiet", *options])
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"{' '.join(options)} exited {child.returncode}")
        result = json.loads((out / "candidates.json").read_bytes())
        result.pop("generator", None)
        cpu = usage.ru_utime + usage.ru_stime
        return seconds, usage.ru_maxrss * 1024, json.dumps(result, sort_keys=True).encode(), cpu


def paired_bare_parse(files: list[Path]) -> float:
    """Wall seconds of two bare parses of the same files at once, each in a forked process."""
    started = time.perf_counter()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # the child: parse, then leave without running the parent's cleanup
            code = 1
            try:
                bare_parse(files)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit("a paired bare parse failed")
    return time.perf_counter() - started


def help_seconds(runs: int = 10) -> float:
    """The median wall time of ``fhir-cohort --help`` in a fresh interpreter: start-up."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fhir_cohort.cli", "--help"], check=True, capture_output=True
        )
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--spark", action="store_true")
    parser.add_argument("--only", action="append", help="run only these settings")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trial", default="misle", help="the trial screened (default: misle)")
    args = parser.parse_args()
    settings = {**SETTINGS, **(SPARK if args.spark else {})}
    if args.only:
        settings = {k: v for k, v in settings.items() if k in args.only}
    results: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "runs": []}
    results["trial"] = args.trial
    # An installed package has its bytecode (pip compiles it); a checkout run with
    # PYTHONDONTWRITEBYTECODE set would compile fhir_cohort's modules on every run.
    compileall.compile_dir(Path(fhir_cohort.__file__).parent, quiet=1)
    results["help_s"] = help_seconds()
    print(f"fhir-cohort --help: {results['help_s']:.3f} s (median of 10)", flush=True)
    for data in args.data:
        files = sorted(data.glob("*.ndjson"))
        bare: list[float] = []
        paired: list[float] = []
        runs: dict[str, list[tuple[float, int, bytes, float]]] = {name: [] for name in settings}
        for _ in range(args.repeat):  # rounds: every setting once per round
            started = time.perf_counter()
            lines = bare_parse(files)
            bare.append(time.perf_counter() - started)
            paired.append(paired_bare_parse(files))
            for name, options in settings.items():
                runs[name].append(cli_run(data, options, args.trial))
        floor = min(bare)
        ceiling = 2 * floor / min(paired)
        ceilings = [2 * alone / pair for alone, pair in zip(bare, paired, strict=True)]
        print(
            f"{data.name}: {lines:,} lines, bare parse {floor:.2f} s; two at once "
            f"{min(paired):.2f} s: two processes' ceiling {ceiling:.2f}x "
            f"(per round {', '.join(f'{c:.2f}' for c in ceilings)})",
            flush=True,
        )
        results.setdefault("ceilings", []).append(
            {
                "data": data.name,
                "bare_parse_s": bare,
                "two_at_once_s": paired,
                "ceiling": ceiling,
                "per_round": ceilings,
            }
        )
        reference = next(iter(runs.values()))[0][2]
        best: dict[str, float] = {}
        for name, done in runs.items():
            seconds = best[name] = min(r[0] for r in done)
            peak = max(r[1] for r in done)
            cpu = min(r[3] for r in done)
            same = all(r[2] == reference for r in done)
            row = {
                "data": data.name,
                "setting": name,
                "seconds": seconds,
                "median_s": statistics.median(r[0] for r in done),
                "x_bare_parse": seconds / floor,
                "peak_rss_mib": peak / 2**20,
                "cpu_s": cpu,
                "same_candidates": same,
                "bare_parse_s": floor,
                "load": os.getloadavg()[0],
            }
            results["runs"].append(row)
            # Each round against its own bare parse: a drift in the VM's speed between
            # rounds falls on both sides of the ratio.
            row["x_bare_per_round"] = [r[0] / b for r, b in zip(done, bare, strict=True)]
            print(
                f"  {name:24s} {seconds:7.2f} s (median {row['median_s']:.2f})  "
                f"{seconds / floor:5.2f}x bare (per round median "
                f"{statistics.median(row['x_bare_per_round']):.2f})  cpu {cpu:6.1f} s  "
                f"peak {peak / 2**20:6.0f} MiB  same={same}",
                flush=True,
            )
        for name in ("default", "workers 2") if "workers 1" in best else ():
            if name in best:
                speedup = best["workers 1"] / best[name]
                pairs = zip(runs["workers 1"], runs[name], strict=True)
                rounds = [one[0] / other[0] for one, other in pairs]
                results.setdefault("speedups", []).append(
                    {"data": data.name, "setting": name, "best": speedup, "per_round": rounds}
                )
                print(
                    f"  {name} against workers 1: {speedup:.2f}x faster "
                    f"({speedup / ceiling:.0%} of the two processes' ceiling; per round "
                    f"{', '.join(f'{r:.2f}' for r in rounds)}, median "
                    f"{statistics.median(rounds):.2f})",
                    flush=True,
                )
    results["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
