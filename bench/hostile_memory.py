"""Benchmark: what a hostile server can cost a run, in memory and disk (issue 8).

    python bench/hostile_memory.py [--src DIR] [--case NAME]... [--json FILE]

Each case runs ``fhir-cohort screen --server URL --as-of 2026-06-30 --quiet`` in a
fresh subprocess (this script with ``--child``) against a small server in this
process (``tests/hostile_servers.py``), with the default limits, and reports the
child's exit code and first line of stderr, its peak RSS (``ru_maxrss``, read by
the child as it exits), its wall time, and the most bytes its state folder (where
a Bulk export is downloaded) held at any moment (polled every 20 ms).

Cases:

* ``honest``: the same server without tricks, one patient (the baseline);
* ``rest-500mb-body``: the first candidate search answers a 500 MB body, streamed;
* ``rest-gzip-bomb``: it answers 1 MB of gzip that inflates to 1 GiB;
* ``bulk-gzip-bomb``: a Bulk export whose Condition file is that bomb.

Issue 8 asks for a peak under 300 MB for the body and the bombs, and bounded
disk for the Bulk bomb. ``--src DIR`` runs the children on another checkout's
``src`` (``PYTHONPATH``), to measure a version from before the limits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from hostile_servers import P01, MiB, MiniFhir, gzip_of, serve  # noqa: E402

LIMIT = 300_000_000  # bytes: the bound on peak memory (300 MB)


BUNDLE_HEAD = b'{"resourceType":"Bundle","type":"searchset","entry":['


def scenarios() -> dict[str, tuple]:
    """Each case: (server scenario, extra screen arguments)."""
    fhir = MiniFhir([P01])
    json_bomb = gzip_of(BUNDLE_HEAD, b" ", 1024 * MiB, b"]}")
    file_bomb = gzip_of(b"", b"\n", 1024 * MiB, b"")

    def candidate_search(call) -> bool:
        return "Condition" in call.path and "_elements" in call.params

    def big_body(call):
        if candidate_search(call):
            call.stream(iter([BUNDLE_HEAD, *[b" " * MiB] * 500, b"]}"]))
        else:
            fhir(call)

    def rest_bomb(call):
        if candidate_search(call):
            call.gzipped(json_bomb)
        else:
            fhir(call)

    def bulk_bomb(call):
        if call.path.endswith("/files/Condition"):
            call.gzipped(file_bomb, content_type="application/fhir+ndjson")
        else:
            fhir(call)

    print(f"bomb sizes: JSON {len(json_bomb):,} B, NDJSON {len(file_bomb):,} B of gzip")
    return {
        "honest": (fhir, ()),
        "rest-500mb-body": (big_body, ()),
        "rest-gzip-bomb": (rest_bomb, ()),
        "bulk-gzip-bomb": (bulk_bomb, ("--bulk",)),
    }


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # renamed or deleted while walking
            total += path.stat().st_size if path.is_file() else 0
    return total


def run_case(name: str, scenario, extra: tuple, src: str | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch, serve(scenario) as server:
        folder = Path(scratch)
        argv = [
            "screen",
            "--server",
            server.base,
            "--as-of",
            "2026-06-30",
            "--out",
            str(folder / "out"),
            "--state",
            str(folder / "state"),
            "--quiet",
            *extra,
        ]
        env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        disk = [0]

        def watch() -> None:
            while child.poll() is None:
                disk[0] = max(disk[0], folder_bytes(folder / "state"))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out, err = child.communicate()
        watcher.join()
        seconds = time.perf_counter() - started
    report = json.loads(out.strip().splitlines()[-1])
    return {
        "case": name,
        "exit": report["code"],
        "peak_rss_mib": round(report["peak"] / MiB, 1),
        "most_disk_mib": round(disk[0] / MiB, 1),
        "seconds": round(seconds, 1),
        "message": (err.strip().splitlines() or [""])[0][:160],
    }


def child(argv: list[str]) -> None:
    """Run the command line here, then print the exit code and this process's peak RSS."""
    from fhir_cohort.cli import main

    code = main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"code": int(code), "peak": peak}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="run the children on this src folder (PYTHONPATH)")
    parser.add_argument(
        "--case", action="append", help="run only this case (repeat for several; default: all)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cases = {k: v for k, v in scenarios().items() if not args.case or k in args.case}
    results = [run_case(name, *case, args.src) for name, case in cases.items()]
    print(f"{'case':<17} {'exit':>4} {'peak RSS':>10} {'most disk':>10} {'seconds':>8}  message")
    for r in results:
        print(
            f"{r['case']:<17} {r['exit']:>4} {r['peak_rss_mib']:>7} MiB {r['most_disk_mib']:>6} MiB"
            f" {r['seconds']:>8}  {r['message']}"
        )
    hostile = [r for r in results if r["case"] != "honest"]
    print(
        "peak memory under 300 MB:",
        all(r["peak_rss_mib"] * MiB < LIMIT for r in hostile),
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
