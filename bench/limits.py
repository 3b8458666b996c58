"""Memory against hostile files: a 500 MB single line and a .gz that inflates to 1 GB.

    python bench/limits.py [--line-mb 500] [--inflated-mb 1024] [--json bench/data/limits.json]

Writes into ``bench/data/limits/`` (git-ignored, made once and reused):

* ``line/Observation.ndjson``: one valid Patient line, then a single line of
  ``--line-mb`` MB (an Observation for that patient whose ``valueString`` is that long),
  then one more valid line;
* ``bomb/Observation.ndjson.gz``: a gzip file (a few MB) whose one line inflates to
  ``--inflated-mb`` MB.

Each is screened by the command line (``python -m fhir_cohort.cli screen``) in its own
child process, with the default limits; the child's peak resident memory comes from
``os.wait4`` (``ru_maxrss``), its exit code and the data-quality notes from its outputs.
Set ``PYTHONPATH`` to measure another checkout (docs/benchmark.md compares with the code
before the limits).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "limits"
MB = 1_000_000
CHUNK = 8 * MB
PATIENT = b'{"resourceType":"Patient","id":"p1","birthDate":"1990-01-15"}\n'


def _long_line(stream, megabytes: int, rid: str) -> None:
    """Write one Observation line of about ``megabytes`` MB, in pieces."""
    head = json.dumps(
        {
            "resourceType": "Observation",
            "id": rid,
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "valueString": "",
        },
        separators=(",", ":"),
    )[:-2].encode()  # all but the closing quote and brace: the value follows
    stream.write(head)
    left = megabytes * MB
    while left > 0:
        piece = min(CHUNK, left)
        stream.write(b"A" * piece)
        left -= piece
    stream.write(b'"}\n')


def make(line_mb: int, inflated_mb: int) -> dict[str, Path]:
    line = DATA / f"line-{line_mb}" / "Observation.ndjson"
    if not line.is_file():
        line.parent.mkdir(parents=True, exist_ok=True)
        with line.open("wb") as stream:
            stream.write(PATIENT)
            _long_line(stream, line_mb, "huge")
            stream.write(PATIENT.replace(b"p1", b"p2"))
    bomb = DATA / f"bomb-{inflated_mb}" / "Observation.ndjson.gz"
    if not bomb.is_file():
        bomb.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(bomb, "wb", compresslevel=9) as stream:
            stream.write(PATIENT)
            _long_line(stream, inflated_mb, "bomb")
    return {"line": line, "bomb": bomb}


def screen(path: Path) -> dict:
    """Screen one file in a child process: exit code, seconds, peak RSS, notes."""
    with tempfile.TemporaryDirectory(prefix="limits-") as work:
        out, state = Path(work) / "out", Path(work) / "state"
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "fhir_cohort.cli", "screen", "--source", str(path),
             "--as-of", "2026-06-30", "--out", str(out), "--state", str(state), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        stderr = child.stderr.read().decode() if child.stderr else ""
        output = out / "candidates.json"
        notes = json.loads(output.read_text())["data_quality"] if output.is_file() else []
    return {
        "file": str(path.relative_to(ROOT)),
        "bytes_on_disk": path.stat().st_size,
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "notes": {n["code"]: n["examples"][0]["message"] for n in notes},
        "stderr": stderr.strip()[:300],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--line-mb", type=int, default=500)
    parser.add_argument("--inflated-mb", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    files = make(args.line_mb, args.inflated_mb)
    results = {name: screen(path) for name, path in files.items()}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
