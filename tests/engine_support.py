"""What the engine tests share: the data sets every engine must agree on, the trials
screened together, a fixed run, and how an engine's answer is compared."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

from fhir_cohort.criteria.language import load
from fhir_cohort.outputs.candidates import json_bytes
from fhir_cohort.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[1]
# Every data set the tests read: both trials' cohorts, the messy files (bad lines, gzip,
# a broken Bundle, duplicates across files), a SMART Bulk export and Synthea Bundles.
DATA_SETS = [
    "misle-cohort",
    "surpass2-cohort",
    "messy",
    "third-party/smart-bulk",
    "third-party/synthea-bundles",
]
AS_OF, NOW = date(2026, 6, 30), 1.9e9  # a fixed run start: lastUpdated checks repeat
TRIALS = [load("misle"), load("surpass2")]


def candidates(run, *sources: str | Path) -> bytes:
    """Both trials' candidates.json, screened in one pass by ``run`` (an engine's screen)."""
    return b"\n".join(json_bytes(s) for s in run([FileSource(*sources)], TRIALS, AS_OF, now=NOW))


def population(out: Path, patients: int, lupus_rate: float) -> Path:
    """A generated population (bench/generate_population.py) in ``out``."""
    generator = ROOT / "bench" / "generate_population.py"
    command = [sys.executable, str(generator), "--patients", str(patients)]
    command += ["--lupus-rate", str(lupus_rate), "--out", str(out), "--quiet"]
    subprocess.run(command, check=True)
    return out
