"""Benchmark: screening throughput against a bare NDJSON parse, and its memory.

    python bench/run.py --data bench/data/pop-2000 --data bench/data/pop-10000 \
        --repeat 3 --json bench/results.json

For each ``--data`` folder (made by bench/generate_population.py), in this one
process:

* bare parse - read every NDJSON file line by line and ``orjson.loads`` each
  line: the floor any Python screening of the same files must pay;
* source / source+filter - ``FileSource.read`` alone, then with the trial's
  ingest filter (``pipeline.pool_gates(...).classify``), to split the cost;
* screening - ``engines.embedded.screen([FileSource(path)], load_trial("misle"),
  date(2026, 6, 30))``, end to end;

each the best of ``--repeat`` wall-clock runs (``time.perf_counter``). Then the
screening runs once more in a fresh ``spawn`` subprocess to measure its own
peak RSS (``ru_maxrss``) and the peak size of the SQLite store file, and once
in another one under ``tracemalloc`` for the Python-heap peak. Finally a sample
of Observation lines is validated with fhir.resources R4B models, to price
model validation against plain dicts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import orjson

AS_OF = date(2026, 6, 30)
TRIAL = "misle"


# -- machine -------------------------------------------------------------------
def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import fhir_cohort  # describe the code actually imported, wherever it lives

    package = Path(fhir_cohort.__file__).resolve().parent
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(package), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem_total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "orjson": version("orjson"),
        "sqlite": sqlite3.sqlite_version,
        "fhir.resources": version("fhir.resources"),
        "pydantic": version("pydantic"),
        "fhir_cohort": version("fhir-cohort"),
        "fhir_cohort_path": str(package),
        "git": commit,
    }


# -- helpers -------------------------------------------------------------------
def best_of(repeat: int, fn):
    """(best seconds, result of the last run) over ``repeat`` runs."""
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def data_files(path: Path) -> list[Path]:
    from fhir_cohort.sources.files import FileSource

    return FileSource(path).files


def population_info(path: Path) -> dict:
    meta = path / ".population.json"
    return orjson.loads(meta.read_bytes()) if meta.is_file() else {}


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- stages --------------------------------------------------------------------
def bare_parse(files: list[Path]) -> int:
    loads = orjson.loads
    count = 0
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    loads(line)
                    count += 1
    return count


def _noop(*_args) -> None:
    return None


def source_only(path: Path) -> int:
    from fhir_cohort.sources.files import FileSource

    count = 0
    for _raw in FileSource(path).read(_noop, _noop):
        count += 1
    return count


def source_and_filter(path: Path, keep) -> tuple[int, int]:
    from fhir_cohort.sources.files import FileSource

    count = kept = 0
    for raw in FileSource(path).read(_noop, _noop):
        count += 1
        if keep(raw.resource):
            kept += 1
    return count, kept


def run_screen(path: Path, trial):
    from fhir_cohort.engines.embedded import screen
    from fhir_cohort.sources.files import FileSource

    return screen([FileSource(path)], trial, AS_OF)


def funnel_summary(screening) -> dict:
    funnel = screening.funnel.to_dict()
    return {
        "patients_read": funnel["patients_read"],
        "resources_read": sum(funnel["resources_read"].values()),
        "pool": funnel["steps"][0]["count"],  # the candidate pool
        "status": funnel["status"],
        "candidates": len(screening.candidates),
        "data_quality_notes": sum(screening.data_quality.counts.values()),
    }


# -- subprocess measurements ---------------------------------------------------
def _dir_size(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total


def _child(path: str, mode: str, tmp: str, conn) -> None:
    """Screen once in a fresh interpreter and send back what it cost."""
    try:
        tempfile.tempdir = tmp
        from fhir_cohort.criteria.language import load as load_trial

        trial = load_trial(TRIAL)
        gc.collect()
        baseline_rss = proc_status("VmRSS")
        baseline_hwm = proc_status("VmHWM")
        peak_disk = 0
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak_disk
            while not stop.wait(0.25):
                peak_disk = max(peak_disk, _dir_size(tmp))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        if mode == "tracemalloc":
            import tracemalloc

            tracemalloc.start()
        started = time.perf_counter()
        screening = run_screen(Path(path), trial)
        seconds = time.perf_counter() - started
        traced_peak = None
        if mode == "tracemalloc":
            import tracemalloc

            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        stop.set()
        poller.join()
        conn.send(
            {
                "mode": mode,
                "seconds": seconds,
                "baseline_rss": baseline_rss,
                "baseline_hwm": baseline_hwm,
                # VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec, so a spawned
                # child starts with its parent's high-water mark; VmHWM is this process's own.
                "peak_rss": proc_status("VmHWM"),
                "peak_rss_over_baseline": proc_status("VmHWM") - baseline_rss,
                "ru_maxrss": maxrss_bytes(),
                "tracemalloc_peak": traced_peak,
                "store_file_peak": peak_disk,
                "patients": screening.funnel.patients_read,
            }
        )
    except BaseException as error:  # report, do not hang the parent
        conn.send({"mode": mode, "error": repr(error)})
    finally:
        conn.close()


def in_subprocess(path: Path, mode: str) -> dict:
    ctx = mp.get_context("spawn")  # fresh interpreter: its RSS is the screening's own
    tmp = tempfile.mkdtemp(prefix="fhir-cohort-bench-")
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "SQLITE_TMPDIR")}
    os.environ["TMPDIR"] = os.environ["SQLITE_TMPDIR"] = tmp  # SQLite spill files too
    try:
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(str(path), mode, tmp, child))
        process.start()
        child.close()
        result = parent.recv()
        process.join()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" in result:
        raise RuntimeError(f"subprocess {mode} failed: {result['error']}")
    return result


# -- fhir.resources ------------------------------------------------------------
def validation_sample(files: list[Path], size: int, repeat: int) -> dict:
    from fhir.resources.R4B.observation import Observation

    lines: list[bytes] = []
    for path in files:
        if not path.name.startswith("Observation"):
            continue
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    lines.append(line)
                    if len(lines) >= size:
                        break
        if len(lines) >= size:
            break
    if not lines:
        return {}
    errors = 0
    loads = orjson.loads

    # Nothing is kept between lines (as on the screening's hot path): retaining 20,000
    # dicts would make the cyclic GC rescan them and slow every variant down.
    def parse_only() -> int:
        for line in lines:
            loads(line)
        return len(lines)

    def validate_dicts() -> int:
        nonlocal errors
        errors = 0
        for line in lines:
            try:
                Observation.model_validate(loads(line))
            except Exception:  # counted, not fatal
                errors += 1
        return len(lines)

    def validate_json() -> int:
        for line in lines:
            with contextlib.suppress(Exception):
                Observation.model_validate_json(line)
        return len(lines)

    parse_s, _ = best_of(repeat, parse_only)
    dict_s, _ = best_of(repeat, validate_dicts)
    json_s, _ = best_of(repeat, validate_json)
    return {
        "sample": len(lines),
        "errors": errors,
        "orjson_loads_s": parse_s,
        "model_validate_s": dict_s,
        "model_validate_json_s": json_s,
        "orjson_loads_per_s": len(lines) / parse_s,
        "model_validate_per_s": len(lines) / dict_s,
        "model_validate_json_per_s": len(lines) / json_s,
        "model_validate_vs_orjson": dict_s / parse_s,
        "model_validate_json_vs_orjson": json_s / parse_s,
    }


# -- profile -------------------------------------------------------------------
def profile_screen(path: Path, trial, out: Path, top: int = 30) -> str:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_screen(path, trial)
    profiler.disable()
    profiler.dump_stats(out)
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buffer.getvalue()


# -- report --------------------------------------------------------------------
def mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.0f} MiB"


def rate(n: float) -> str:
    return f"{n:,.0f}"


def markdown(
    machine: dict, results: list[dict], validation: dict, repeat: int, breakdown_repeat: int
) -> str:
    out = []
    out.append("### Machine\n")
    out.append(
        f"- CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, "
        f"{machine['usable_cpus']} usable)"
    )
    if machine["memory_bytes"]:
        out.append(f"- RAM: {machine['memory_bytes'] / 2**30:.1f} GiB")
    out.append(f"- OS: {machine['os']}")
    out.append(
        f"- Python {machine['python']} ({machine['python_impl']}), "
        f"orjson {machine['orjson']}, SQLite {machine['sqlite']}, "
        f"fhir.resources {machine['fhir.resources']}, pydantic {machine['pydantic']}"
    )
    out.append(
        f"- fhir-cohort {machine['fhir_cohort']} from {machine['fhir_cohort_path']} "
        f"(git: {machine['git'] or 'not a checkout'})\n"
    )

    out.append(
        f"### Throughput (wall clock, one process; bare parse and screen() best of {repeat}"
        + (f", the FileSource rows best of {breakdown_repeat}" if breakdown_repeat else "")
        + ")\n"
    )
    out.append(
        "| data set | patients | resources | NDJSON | stage | seconds | resources/s "
        "| × bare parse |"
    )
    out.append("|---|--:|--:|--:|---|--:|--:|--:|")
    for r in results:
        base = r["bare_parse_s"]
        first = True
        for label, key in (
            ("bare parse (orjson.loads per line)", "bare_parse_s"),
            ("FileSource.read", "source_s"),
            ("FileSource.read + ingest filter", "source_filter_s"),
            ("**screen() end to end**", "screen_s"),
        ):
            seconds = r[key]
            if seconds is None:
                continue
            head = (
                f"| {r['name']} | {r['patients']:,} | {r['resources']:,} | {mb(r['bytes'])} "
                if first
                else "| | | | "
            )
            out.append(
                f"{head}| {label} | {seconds:,.2f} | {rate(r['resources'] / seconds)} "
                f"| {seconds / base:.2f}× |"
            )
            first = False
    out.append("")
    out.append("### Screening memory (fresh `spawn` subprocess per measurement)\n")
    out.append(
        "| data set | resources | kept by filter | peak RSS | RSS growth during screen "
        "| Python heap peak (tracemalloc) | SQLite store file peak | "
        "main process ru_maxrss before → after |"
    )
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        m, t = r["memory"], r.get("tracemalloc")
        heap = "not run" if t is None else mb(t["tracemalloc_peak"])
        kept = (
            "–"
            if r["kept"] is None
            else f"{r['kept']:,} ({100 * r['kept'] / r['resources']:.1f} %)"
        )
        out.append(
            f"| {r['name']} | {r['resources']:,} | {kept} | {mb(m['peak_rss'])} | "
            f"{mb(m['peak_rss_over_baseline'])} | {heap} | "
            f"{mb(m['store_file_peak'])} | {mb(r['main_maxrss_before'])} → "
            f"{mb(r['main_maxrss_after'])} |"
        )
    out.append("")
    out.append("### Outcome (sanity check: the synthetic lupus patients are found)\n")
    out.append(
        "| data set | patients read | lupus evidence | eligible | washout | needs-review "
        "| excluded | not-a-candidate | data-quality notes |"
    )
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        f = r["funnel"]
        s = f["status"]
        out.append(
            f"| {r['name']} | {f['patients_read']:,} | {f['pool']} | "
            f"{s.get('eligible', 0)} | {s.get('washout', 0)} | "
            f"{s.get('needs-review', 0)} | {s.get('excluded', 0)} | "
            f"{s.get('not-a-candidate', 0):,} | {f['data_quality_notes']} |"
        )
    if validation:
        v = validation
        out.append("")
        out.append(
            f"### fhir.resources R4B validation ({v['sample']:,} Observation lines, "
            f"best of {repeat}; {v['errors']} failed validation)\n"
        )
        out.append("| method | seconds | resources/s | × orjson.loads |")
        out.append("|---|--:|--:|--:|")
        out.append(
            f"| orjson.loads (plain dict) | {v['orjson_loads_s']:.3f} | "
            f"{rate(v['orjson_loads_per_s'])} | 1.00× |"
        )
        out.append(
            f"| orjson.loads + Observation.model_validate(dict) | "
            f"{v['model_validate_s']:.3f} | {rate(v['model_validate_per_s'])} | "
            f"{v['model_validate_vs_orjson']:.1f}× |"
        )
        out.append(
            f"| Observation.model_validate_json(bytes) | {v['model_validate_json_s']:.3f} | "
            f"{rate(v['model_validate_json_per_s'])} | "
            f"{v['model_validate_json_vs_orjson']:.1f}× |"
        )
    return "\n".join(out) + "\n"


# -- main ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="population folder; give it again for more sizes",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument(
        "--validate-sample",
        type=int,
        default=20_000,
        help="Observation lines to validate with fhir.resources (0: skip)",
    )
    parser.add_argument(
        "--tracemalloc",
        choices=("auto", "always", "never"),
        default="auto",
        help="Python-heap peak in a tracemalloc subprocess; it runs ~7x slower "
        "than the screening, so 'auto' does it only for data sets of at most "
        "--tracemalloc-limit resources",
    )
    parser.add_argument("--tracemalloc-limit", type=int, default=1_000_000)
    parser.add_argument(
        "--breakdown-repeat",
        type=int,
        default=1,
        help="runs of the FileSource / filter stages (0: skip them)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="also cProfile one screening of the first --data; pstats file here",
    )
    args = parser.parse_args(argv)

    from fhir_cohort.criteria.language import load as load_trial
    from fhir_cohort.pipeline import pool_gates

    machine = machine_info()
    trial = load_trial(TRIAL)
    keep = pool_gates([trial]).classify
    results = []
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    for path in args.data:
        files = data_files(path)
        info = population_info(path)
        r: dict = {
            "name": path.name,
            "path": str(path),
            "patients": info.get("patients"),
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
        }
        for p in files:  # warm the page cache so the first timed stage is not penalised
            with p.open("rb") as handle:
                while handle.read(1 << 24):
                    pass
        log(f"[{path.name}] bare parse x{args.repeat}")
        r["bare_parse_s"], r["resources"] = best_of(
            args.repeat, lambda files=files: bare_parse(files)
        )
        r["kept"] = r["source_s"] = r["source_filter_s"] = None
        if args.breakdown_repeat > 0:
            n = args.breakdown_repeat
            log(f"[{path.name}] FileSource.read x{n}")
            r["source_s"], _ = best_of(n, lambda path=path: source_only(path))
            log(f"[{path.name}] FileSource.read + filter x{n}")
            r["source_filter_s"], (_, r["kept"]) = best_of(
                n, lambda path=path: source_and_filter(path, keep)
            )
        log(f"[{path.name}] screen x{args.repeat}")
        gc.collect()
        r["main_maxrss_before"] = maxrss_bytes()
        r["screen_s"], screening = best_of(args.repeat, lambda path=path: run_screen(path, trial))
        r["main_maxrss_after"] = maxrss_bytes()
        r["funnel"] = funnel_summary(screening)
        if r["patients"] is None:
            r["patients"] = r["funnel"]["patients_read"]
        del screening
        r["ratio_screen_vs_bare"] = r["screen_s"] / r["bare_parse_s"]
        for key in ("bare_parse", "source", "source_filter", "screen"):
            seconds = r[f"{key}_s"]
            r[f"{key}_per_s"] = r["resources"] / seconds if seconds else None
        log(f"[{path.name}] screen in a subprocess (peak RSS)")
        r["memory"] = in_subprocess(path, "rss")
        r["tracemalloc"] = None
        if args.tracemalloc == "always" or (
            args.tracemalloc == "auto" and r["resources"] <= args.tracemalloc_limit
        ):
            log(f"[{path.name}] screen in a subprocess under tracemalloc")
            r["tracemalloc"] = in_subprocess(path, "tracemalloc")
        log(
            f"[{path.name}] screen {r['screen_s']:.2f}s vs bare {r['bare_parse_s']:.2f}s "
            f"= {r['ratio_screen_vs_bare']:.2f}x"
        )
        results.append(r)

    validation = {}
    if args.validate_sample:
        log(f"fhir.resources validation on {args.validate_sample:,} Observation lines")
        validation = validation_sample(data_files(args.data[0]), args.validate_sample, args.repeat)
    profile_text = None
    if args.profile:
        log(f"cProfile of one screening of {args.data[0].name} -> {args.profile}")
        profile_text = profile_screen(args.data[0], trial, args.profile)

    report = markdown(machine, results, validation, args.repeat, args.breakdown_repeat)
    print(report)
    if profile_text:
        print("### cProfile (one screening)\n\n```\n" + profile_text + "```")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(
            orjson.dumps(
                {
                    "machine": machine,
                    "repeat": args.repeat,
                    "as_of": AS_OF.isoformat(),
                    "breakdown_repeat": args.breakdown_repeat,
                    "trial": TRIAL,
                    "results": results,
                    "validation": validation,
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
