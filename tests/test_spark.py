"""The Spark engine gives the embedded engine's candidates.json byte for byte, in a
``local[2]`` session: the bundled cohort, the messy fixture (bad lines, gzip, a broken
Bundle, duplicates across files) and a generated population."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import AS_OF, DATA_SETS, NOW, ROOT, TRIALS, candidates, population

from fhir_cohort.engines.embedded import Embedded
from fhir_cohort.engines.spark import Spark
from fhir_cohort.errors import UsageError
from fhir_cohort.outputs.candidates import json_bytes
from fhir_cohort.sources import SourceError
from fhir_cohort.sources.files import FileSource

pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module, with few shuffle partitions (small data)."""
    engine = Spark("local[2]")
    session = engine.session()
    session.conf.set("spark.sql.shuffle.partitions", "4")
    yield engine
    session.stop()


@pytest.mark.parametrize("fixture", DATA_SETS)
def test_spark_equals_embedded_on_fixtures(spark, fixture):
    path = ROOT / "fixtures" / fixture
    assert candidates(spark.screen, path) == candidates(Embedded().screen, path)


def test_spark_equals_embedded_on_a_population(spark, tmp_path):
    out = tmp_path / "pop"
    population(out, 40, 0.25)
    reference = candidates(Embedded().screen, out)
    assert b'"status": "eligible"' in reference
    assert candidates(spark.screen, out) == reference
    # every file in line-aligned parts read from its path, not whole through Hadoop
    assert candidates(Spark("local[2]", whole=1).screen, out) == reference


def _as_paths(data: bytes, folder: Path) -> bytes:
    """Notes name a file by the URI it was read from: the same file, named as a path."""
    return data.replace(f"file:{folder}".encode(), str(folder).encode())


@pytest.mark.parametrize("fixture", ["misle-cohort", "messy"])
def test_a_hadoop_uri_is_listed_and_read_by_the_cluster(spark, fixture):
    """A source given as a URI (file:// here; hdfs:// or s3a:// on a cluster) is listed
    by the cluster's Hadoop filesystem and its files read there: the same candidates."""
    path = (ROOT / "fixtures" / fixture).resolve()
    reference = candidates(Embedded().screen, path)
    uri = path.as_uri()
    read = b"\n".join(
        json_bytes(s) for s in spark.screen([FileSource(uri)], TRIALS, AS_OF, now=NOW)
    )
    assert _as_paths(read, path) == reference


def test_a_remote_file_too_large_to_read_whole_is_refused(spark):
    path = (ROOT / "fixtures" / "misle-cohort").resolve()
    tight = Spark("local[2]", largest_remote=1)
    with pytest.raises(UsageError, match="read whole by one executor, up to 0 MiB"):
        tight.screen([FileSource(path.as_uri())], TRIALS, AS_OF, now=NOW)


def test_a_uri_nothing_lists_is_one_clear_error(spark, tmp_path):
    with pytest.raises(SourceError, match=r"cannot list file:.*missing"):
        spark.screen([FileSource((tmp_path / "missing").as_uri())], TRIALS, AS_OF, now=NOW)
    (tmp_path / "notes.txt").write_text("not FHIR")
    with pytest.raises(SourceError, match=r"holds no \.ndjson or \.json files"):
        spark.screen([FileSource(tmp_path.as_uri())], TRIALS, AS_OF, now=NOW)


def test_other_engines_refuse_a_uri(tmp_path, capsys):
    """Only Spark reads through a Hadoop filesystem: the others say so (exit 2)."""
    from fhir_cohort.cli import main

    argv = ["screen", "--source", "hdfs://nn:8020/exports", "--as-of", "2026-06-30"]
    argv += ["--out", str(tmp_path / "o"), "--state", str(tmp_path / "s")]
    for engine in (["--workers", "2"], ["--engine", "embedded"]):
        assert main([*argv, *engine]) == 2
        err = capsys.readouterr().err
        assert "hdfs://nn:8020/exports is read through a Hadoop filesystem" in err
        assert "--engine spark" in err


# The JVM's own notice when Spark loads an incubating module: printed before any logging
# is set up, so no configuration of ours reaches it.
JVM_NOTICES = ("WARNING: Using incubator modules:",)


def _local_session(env: dict[str, str]) -> tuple[list[str], str]:
    """A quiet local session started in a fresh process: what its driver's Java options
    and heap are, and what it printed on stderr."""
    code = (
        "from fhir_cohort.engines.spark import Spark\n"
        "session = Spark('local[1]').session(quiet=True)\n"
        "context = session.sparkContext\n"
        "print(context.getConf().get('spark.driver.extraJavaOptions'))\n"
        "print(context._jvm.java.lang.Runtime.getRuntime().maxMemory())\n"
        "session.stop()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines(), run.stderr


def test_a_local_session_leaves_the_users_own_spark_settings(tmp_path):
    """A local session's defaults (a 2 GiB driver, quiet logging) reach the JVM through
    the environment it inherits, never as Spark settings: a user's own
    spark.driver.memory and spark.driver.extraJavaOptions stay as they set them, and the
    logging configuration they name wins over ours."""
    mine = tmp_path / "mine.properties"
    mine.write_text(
        "rootLogger.level = info\nrootLogger.appenderRef.stderr.ref = stderr\n"
        "appender.console.type = Console\nappender.console.name = stderr\n"
        "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = MINE %m%n\n"
    )
    options = f"-Dlog4j2.configurationFile={mine.as_uri()} -Dfhir.cohort.mine=1"
    (tmp_path / "conf").mkdir()  # the user's spark-defaults.conf
    (tmp_path / "conf" / "spark-defaults.conf").write_text(
        f"spark.driver.extraJavaOptions {options}\nspark.driver.memory 1200m\n"
    )
    (java, heap), said = _local_session({**os.environ, "SPARK_CONF_DIR": str(tmp_path / "conf")})
    assert java.endswith(options)  # after the JVM module options Spark adds
    assert int(heap) < 1300 * 2**20 and "MINE " in said
    (_, heap), said = _local_session(dict(os.environ))  # nothing of the user's
    assert int(heap) > 1600 * 2**20 and said.splitlines() == [
        line for line in said.splitlines() if line.startswith(JVM_NOTICES)
    ]


def test_a_quiet_spark_screen_prints_nothing_of_sparks_own(tmp_path):
    """A scheduled run is quiet unless something is wrong: with --quiet, Spark's stage
    progress bars and its log lines (the loopback address, the native library, the
    shell's log level) stay off stderr."""
    command = [sys.executable, "-m", "fhir_cohort.cli", "screen", "--engine", "spark",
               "--spark-master", "local[1]", "--quiet", "--source", str(ROOT / "fixtures" /
               "misle-cohort"), "--as-of", AS_OF.isoformat(), "--out", str(tmp_path / "out"),
               "--state", str(tmp_path / "state")]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    said = [line for line in run.stderr.splitlines() if not line.startswith(JVM_NOTICES)]
    assert said == []
    assert (tmp_path / "out" / "candidates.json").is_file()
