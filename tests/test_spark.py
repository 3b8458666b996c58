"""The Spark engine gives the embedded engine's candidates.json byte for byte, in a
``local[2]`` session: the bundled cohort, the messy fixture (bad lines, gzip, a broken
Bundle, duplicates across files) and a generated population."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from fhir_cohort.criteria.language import load
from fhir_cohort.engines.embedded import Embedded
from fhir_cohort.engines.spark import Spark
from fhir_cohort.outputs.candidates import json_bytes
from fhir_cohort.sources.files import FileSource

pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[1]
AS_OF, NOW = date(2026, 6, 30), 1.9e9
TRIALS = [load("misle"), load("surpass2")]


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module, with few shuffle partitions (small data)."""
    engine = Spark("local[2]")
    session = engine.session()
    session.conf.set("spark.sql.shuffle.partitions", "4")
    yield engine
    session.stop()


def candidates(run, path: Path) -> bytes:
    """Both trials' candidates.json, screened in one pass."""
    return b"\n".join(json_bytes(s) for s in run([FileSource(path)], TRIALS, AS_OF, now=NOW))


@pytest.mark.parametrize("fixture", ["misle-cohort", "messy"])
def test_spark_equals_embedded_on_fixtures(spark, fixture):
    path = ROOT / "fixtures" / fixture
    assert candidates(spark.screen, path) == candidates(Embedded().screen, path)


def test_spark_equals_embedded_on_a_population(spark, tmp_path):
    out = tmp_path / "pop"
    generator = ROOT / "bench" / "generate_population.py"
    command = [sys.executable, str(generator), "--patients", "40", "--lupus-rate", "0.25"]
    subprocess.run([*command, "--out", str(out), "--quiet"], check=True)
    reference = candidates(Embedded().screen, out)
    assert b'"status": "eligible"' in reference
    assert candidates(spark.screen, out) == reference
    # every file in line-aligned parts read from its path, not whole through Hadoop
    assert candidates(Spark("local[2]", whole=1).screen, out) == reference
