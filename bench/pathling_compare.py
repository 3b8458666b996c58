"""Side by side with Pathling: the candidate pool and its ANA and anti-dsDNA results.

    bash bench/pathling_setup.sh                     # once: bench/.venv-pathling
    python bench/pathling_compare.py --data bench/data/pop-2000 --repeat 5 \
        --json bench/data/pathling/pop-2000.json [--no-network]

Run with the project's own environment (fhir-cohort and orjson installed); the
Pathling side runs this same file again under bench/.venv-pathling/bin/python
(``--worker``), because Pathling 6.3.1 needs pyspark 3.4 and the project's Spark
is 4.x.

The question both answer, on the same NDJSON population: which patients have an
SLE Condition (any code of queries/valuesets/sle-diagnosis.json), and what are
their ANA (lab-ana.json) and anti-dsDNA (lab-anti-dsdna.json) Observations
(id, code, date, value)?

* Pathling (FHIRPath extract API; Spark ``local[2]``): one extract of Condition
  (``subject.reference`` and each system's codes), one of Observation (id,
  subject, LOINC code, ``effectiveDateTime``, ``valueString``,
  ``valueQuantity.value/unit``), each kept where a code is in the value sets (a
  Spark ``isin``, see ``coded``), joined in Spark on the patient reference and
  written to ``pathling.csv``.
  Pathling 6.3.1 computes a UCUM canonical form of every Quantity when it encodes
  a resource, which makes encoding Observations slow, so it is done once, as
  Pathling's own workflow does: ``pc.read.ndjson`` then ``ds.write.parquet`` (the
  "import"). Timed: one cold process (interpreter, JVM start, import, first
  query and CSV), the query alone after that in the same process (``--query-repeat``
  runs), and ``--repeat`` cold processes that query the imported Parquet.
* fhir-cohort: the whole CLI screen, ``fhir-cohort screen --trial misle --source
  DATA --as-of 2026-06-30 --quiet``, ``--repeat`` cold processes, each with a fresh
  state folder; the pool and results are read back from ``candidates.json``
  (every criterion's evidence, at any depth).
* the bare parse: every line ``orjson.loads``-ed in this process (bench/run.py's
  ``bare_parse``), ``--repeat`` runs: the baseline every benchmark here reports
  ratios against.

Peak memory: fhir-cohort's from ``getrusage(RUSAGE_CHILDREN)`` in a small wrapper
process that runs the CLI; Pathling's as the JVM's and the Python driver's own
``VmHWM`` (``/proc/PID/status``), read by the worker before it stops Spark.
Offline: ``spark.jars.packages`` is never set and ``spark.jars.ivy`` points at
an empty folder that is checked afterwards; ``--no-network`` runs every Pathling
process in a network namespace of its own with only loopback (``unshare --net``,
root only), so a download attempt fails the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VALUESETS = ROOT / "queries" / "valuesets"
PATHLING_PYTHON = HERE / ".venv-pathling" / "bin" / "python"
AS_OF = "2026-06-30"
POOL_VALUESET = "sle-diagnosis"
LAB_VALUESETS = {"ana": "lab-ana", "anti-dsdna": "lab-anti-dsdna"}
PATHLING_TYPES = ("Patient", "Condition", "Observation")
CSV_FIELDS = ("patient", "observation", "lab", "code", "date", "value_string", "value", "unit")


# -- value sets and FHIRPath (pure) --------------------------------------------------
def valueset_codes(name: str) -> frozenset[tuple[str, str]]:
    """(system, code) pairs enumerated in a value set's ``compose.include``."""
    data = json.loads((VALUESETS / f"{name}.json").read_text())
    return frozenset(
        (include["system"], concept["code"])
        for include in data["compose"]["include"]
        for concept in include.get("concept", ())
    )


def by_system(codes: frozenset[tuple[str, str]]) -> dict[str, frozenset[str]]:
    """Codes grouped by their system.

    >>> by_system(frozenset({("http://loinc.org", "1-8"), ("http://snomed.info/sct", "9")}))
    {'http://loinc.org': frozenset({'1-8'}), 'http://snomed.info/sct': frozenset({'9'})}
    """
    systems: dict[str, set[str]] = {}
    for system, code in sorted(codes):
        systems.setdefault(system, set()).add(code)
    return {system: frozenset(found) for system, found in systems.items()}


def lab_of(code: str, labs: dict[str, frozenset[str]]) -> str | None:
    """Which lab a LOINC code belongs to.

    >>> lab_of("5130-0", {"ana": frozenset({"5048-4"}), "anti-dsdna": frozenset({"5130-0"})})
    'anti-dsdna'
    """
    return next((lab for lab, codes in labs.items() if code in codes), None)


def loinc_labs() -> dict[str, frozenset[str]]:
    return {
        lab: frozenset(
            code for system, code in valueset_codes(name) if system == "http://loinc.org"
        )
        for lab, name in LAB_VALUESETS.items()
    }


# -- the Pathling worker (runs under bench/.venv-pathling) ---------------------------
def peak_rss(pid: int) -> int | None:
    """A process's own peak RSS (VmHWM, bytes), or None when /proc cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def spark_session(ivy: Path, memory: str):
    from pathling.etc import find_jar
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master("local[2]")
        .appName("pathling-compare")
        .config("spark.jars", find_jar())  # the jar inside the wheel; no spark.jars.packages
        .config("spark.jars.ivy", str(ivy))  # must stay empty: nothing resolved from Maven
        .config("spark.driver.memory", memory)  # the heap of the one local-mode JVM
        .config("spark.sql.shuffle.partitions", "4")  # 200 by default; the join is tiny
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )


def coded(ds, resource: str, columns: dict[str, str], codes: frozenset[tuple[str, str]]):
    """Pathling extract of ``columns`` (name -> FHIRPath) for resources with a coding in ``codes``.

    The FHIRPath extract pulls each system's codes (``code.coding.where(system =
    ...).code``); the set membership is a Spark ``isin`` on those columns. Pathling
    6.3.1 can test membership in FHIRPath only with ``memberOf`` (a terminology
    server) or a chain of ``or``-ed comparisons, and with the 44 codes of the SLE
    value set such a chain made each query several times slower (docs/benchmark.md).
    The matched code is kept as the column ``code``.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    systems = by_system(codes)
    code_columns = [f"code_{i}" for i in range(len(systems))]
    frame = ds.extract(
        resource,
        columns=[
            *columns.values(),
            *(f"code.coding.where(system = '{system}').code" for system in systems),
        ],
    ).toDF(*columns, *code_columns)
    matched = [
        F.when(F.col(name).isin(sorted(found)), F.col(name))
        for name, found in zip(code_columns, systems.values(), strict=True)
    ]
    return (
        frame.withColumn("code", F.coalesce(*matched))
        .where(reduce(lambda x, y: x | y, (m.isNotNull() for m in matched)))
        .drop(*code_columns)
    )


def pathling_query(ds) -> list[dict]:
    """The question on a Pathling DataSource: pool patients with their ANA and anti-dsDNA."""
    labs = loinc_labs()
    pool = (
        coded(ds, "Condition", {"patient": "subject.reference"}, valueset_codes(POOL_VALUESET))
        .select("patient")
        .distinct()
    )
    results = coded(
        ds,
        "Observation",
        {
            "observation": "id",
            "subject": "subject.reference",
            "date": "effectiveDateTime",
            "value_string": "valueString",
            "value": "valueQuantity.value",
            "unit": "valueQuantity.unit",
        },
        frozenset().union(*(valueset_codes(name) for name in LAB_VALUESETS.values())),
    ).distinct()
    joined = (
        pool.join(results, pool["patient"] == results["subject"], "left")
        .drop("subject")
        .orderBy("patient", "date", "observation", "code")
    )
    rows = []
    for row in joined.collect():
        record = row.asDict()
        record["lab"] = lab_of(record["code"], labs) if record["code"] else None
        if record["value"] is not None:
            record["value"] = f"{record['value'].normalize():f}"
        rows.append(record)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key) for key in CSV_FIELDS})


def keep_types(name: str) -> list[str]:
    """NDJSON file name -> the resource types Pathling should read from it."""
    rtype = name.split(".", 1)[0]
    return [rtype] if rtype in PATHLING_TYPES else []


def worker(args: argparse.Namespace) -> int:
    """Pathling in this process: ``import`` (NDJSON -> Parquet, then query) or ``query``."""
    from importlib import metadata

    from pathling import PathlingContext

    phases: dict[str, float] = {}
    started = time.perf_counter()
    spark = spark_session(args.ivy, args.driver_memory)
    spark.sparkContext.setLogLevel("ERROR")
    pc = PathlingContext.create(spark, enable_terminology=False)  # no terminology server
    phases["spark_and_context_s"] = time.perf_counter() - started
    if args.worker == "import":
        mark = time.perf_counter()
        source = pc.read.ndjson(str(args.data), file_name_mapper=keep_types)
        shutil.rmtree(args.parquet, ignore_errors=True)
        source.write.parquet(str(args.parquet))
        phases["import_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    ds = pc.read.parquet(str(args.parquet))
    rows = pathling_query(ds)
    write_csv(rows, args.csv)
    phases["first_query_s"] = time.perf_counter() - mark
    csv_written = time.time()
    query_only = []
    for _ in range(args.query_repeat):
        mark = time.perf_counter()
        pathling_query(pc.read.parquet(str(args.parquet)))
        query_only.append(time.perf_counter() - mark)
    memory = {
        "jvm_peak_rss": peak_rss(spark._jvm.java.lang.ProcessHandle.current().pid()),
        "driver_peak_rss": peak_rss(os.getpid()),
    }
    result = {
        "mode": args.worker,
        "csv_written_at": csv_written,
        "phases": phases,
        "query_only_s": query_only,
        "rows": len(rows),
        **memory,
        "versions": {
            "pathling": metadata.version("pathling"),
            "pyspark": metadata.version("pyspark"),
            "py4j": metadata.version("py4j"),
            "spark": spark.version,
            "java": spark._jvm.java.lang.System.getProperty("java.version"),
            "python": platform.python_version(),
            "spark.master": spark.sparkContext.master,
            "spark.driver.memory": spark.conf.get("spark.driver.memory"),
            "spark.jars.packages": spark.conf.get("spark.jars.packages", None),
        },
    }
    spark.stop()
    args.result.write_text(json.dumps(result))
    return 0


# -- the orchestrator (runs in the project's environment) ----------------------------
RUSAGE_WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"returncode": code, "seconds": seconds, "peak_rss": peak}))
"""


def summary(seconds: list[float]) -> dict:
    return {"best": min(seconds), "median": statistics.median(seconds), "runs": seconds}


def run_fhir_cohort(data: Path, work: Path, run: int) -> dict:
    out, state = work / f"fhir-cohort-out-{run}", Path(tempfile.mkdtemp(prefix="fc-state-"))
    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("fhir-cohort")), "screen", "--trial", "misle"]
    command += ["--source", str(data), "--as-of", AS_OF, "--out", str(out)]
    command += ["--state", str(state), "--quiet"]
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUSAGE_WRAPPER, *command],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"fhir-cohort screen exited {result['returncode']}")
    result["out"] = str(out)
    return result


def isolated(command: list[str]) -> list[str]:
    """Run ``command`` in a new network namespace where only loopback is up."""
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def run_pathling(args: argparse.Namespace, mode: str, work: Path, run: int) -> dict:
    ivy, result = work / f"ivy-{mode}-{run}", work / f"pathling-{mode}-{run}.json"
    shutil.rmtree(ivy, ignore_errors=True)
    result.unlink(missing_ok=True)
    command = [str(args.pathling_python), __file__, "--worker", mode, "--data", str(args.data)]
    command += ["--parquet", str(work / "parquet"), "--csv", str(work / "pathling.csv")]
    command += ["--ivy", str(ivy), "--result", str(result), "--driver-memory", args.driver_memory]
    command += ["--query-repeat", str(args.query_repeat if mode == "import" else 0)]
    if args.no_network:
        command = isolated(command)
    log = (work / f"pathling-{mode}-{run}.log").open("w")
    launched, started = time.time(), time.perf_counter()
    with log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"Pathling {mode} exited {done.returncode}; see {log.name}")
    report = json.loads(result.read_text())
    report["process_s"] = seconds
    report["cold_to_csv_s"] = report["csv_written_at"] - launched
    report["ivy_files"] = sorted(str(p) for p in ivy.rglob("*")) if ivy.exists() else []
    result.write_text(json.dumps(report))  # complete, for --parquet-exists
    return report


def evidence_observations(node, labs: dict[str, frozenset[str]]) -> set[tuple[str, str]]:
    """(observation id, lab) of every ANA / anti-dsDNA Observation cited anywhere in ``node``.

    >>> labs = {"ana": frozenset({"5048-4"})}
    >>> sorted(evidence_observations(
    ...     {"a": [{"resource": "Observation/x", "code": "http://loinc.org|5048-4"}]}, labs))
    [('x', 'ana')]
    """
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        resource, code = node.get("resource"), node.get("code")
        if isinstance(resource, str) and resource.startswith("Observation/") and code:
            system, _, value = code.partition("|")
            lab = lab_of(value, labs) if system == "http://loinc.org" else None
            if lab:
                found.add((resource.split("/", 1)[1], lab))
        for value in node.values():
            found |= evidence_observations(value, labs)
    elif isinstance(node, list):
        for value in node:
            found |= evidence_observations(value, labs)
    return found


def agreement(candidates_json: Path, pathling_csv: Path) -> dict:
    """Compare the two answers: pool patients and (patient, observation, lab) triples."""
    labs = loinc_labs()
    candidates = json.loads(candidates_json.read_text())["candidates"]
    fc_pool = {c["patient"] for c in candidates}
    fc_results = {
        (c["patient"], obs, lab) for c in candidates for obs, lab in evidence_observations(c, labs)
    }
    with pathling_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    pl_pool = {row["patient"].removeprefix("Patient/") for row in rows}
    pl_results = {
        (row["patient"].removeprefix("Patient/"), row["observation"], row["lab"])
        for row in rows
        if row["observation"]
    }
    return {
        "pool": {"fhir_cohort": len(fc_pool), "pathling": len(pl_pool)},
        "results": {"fhir_cohort": len(fc_results), "pathling": len(pl_results)},
        "pool_only_fhir_cohort": sorted(fc_pool - pl_pool),
        "pool_only_pathling": sorted(pl_pool - fc_pool),
        "results_only_fhir_cohort": sorted(fc_results - pl_results),
        "results_only_pathling": sorted(pl_results - fc_results),
        "agree": fc_pool == pl_pool and fc_results == pl_results,
        "fhir_cohort_statuses": sorted({c["status"] for c in candidates}),
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def mib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.0f} MiB"


def table(r: dict) -> str:
    bare = r["bare_parse"]["best"]
    fc = r["fhir_cohort"]["seconds"]["best"]
    imp, cold = r["pathling_import"], r["pathling_cold_query"]
    rows = [
        ("bare parse (orjson.loads per line, in-process)", r["bare_parse"], None),
        ("fhir-cohort screen (CLI, cold process)", r["fhir_cohort"]["seconds"], r["fc_rss"]),
        (
            "Pathling import + first query (cold process: JVM, NDJSON->Parquet, CSV)",
            summary([imp["cold_to_csv_s"]]),
            imp["rss"],
        ),
        ("  of which NDJSON -> Parquet import", summary([imp["phases"]["import_s"]]), None),
        ("Pathling query alone after load (same process)", summary(imp["query_only_s"]), None),
        ("Pathling query from Parquet (cold process)", cold["cold_to_csv_s"], cold["rss"]),
    ]
    out = [
        "| run | best s | median s | × bare parse | × fhir-cohort | peak RSS |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for label, s, rss in rows:
        out.append(
            f"| {label} | {s['best']:,.2f} | {s['median']:,.2f} | {s['best'] / bare:,.2f}× "
            f"| {s['best'] / fc:,.2f}× | {rss or '–'} |"
        )
    return "\n".join(out)


def orchestrate(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    from run import bare_parse, data_files, population_info  # bench/run.py

    work = args.work or HERE / "data" / "pathling" / args.data.name
    work.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    files = data_files(args.data)
    info = population_info(args.data)
    r: dict = {
        "data": str(args.data),
        "patients": info.get("patients"),
        "resources": info.get("total_resources"),
        "bytes": sum(p.stat().st_size for p in files),
        "repeat": args.repeat,
        "query_repeat": args.query_repeat,
        "no_network": args.no_network,
        "uptime_before": uptime(),
        "cpus": os.cpu_count(),
    }
    for path in files:  # warm the page cache for every contestant alike
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass
    log(f"[{args.data.name}] bare parse x{args.repeat}")
    bare = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        bare_parse(files)
        bare.append(time.perf_counter() - started)
    r["bare_parse"] = summary(bare)

    log(f"[{args.data.name}] fhir-cohort screen x{args.repeat} (cold processes)")
    fc_runs = [run_fhir_cohort(args.data, work, i) for i in range(args.repeat)]
    r["fhir_cohort"] = {
        "seconds": summary([x["seconds"] for x in fc_runs]),
        "peak_rss": max(x["peak_rss"] for x in fc_runs),
    }
    r["fc_rss"] = mib(r["fhir_cohort"]["peak_rss"])

    if args.parquet_exists and (work / "parquet").is_dir():
        log(f"[{args.data.name}] reusing {work / 'parquet'}; no import run")
        imp = json.loads((work / "pathling-import-0.json").read_text())
    else:
        log(f"[{args.data.name}] Pathling import + query (cold; this is the slow part)")
        imp = run_pathling(args, "import", work, 0)
    imp["rss"] = f"JVM {mib(imp['jvm_peak_rss'])} + driver {mib(imp['driver_peak_rss'])}"
    r["pathling_import"] = imp
    log(f"[{args.data.name}] Pathling query from Parquet x{args.repeat} (cold processes)")
    cold = [run_pathling(args, "query", work, i) for i in range(args.repeat)]
    r["pathling_cold_query"] = {
        "cold_to_csv_s": summary([x["cold_to_csv_s"] for x in cold]),
        "process_s": summary([x["process_s"] for x in cold]),
        "spark_and_context_s": summary([x["phases"]["spark_and_context_s"] for x in cold]),
        "query_s": summary([x["phases"]["first_query_s"] for x in cold]),
        "jvm_peak_rss": max(x["jvm_peak_rss"] or 0 for x in cold),
        "driver_peak_rss": max(x["driver_peak_rss"] or 0 for x in cold),
        "ivy_files": sorted({f for x in cold for f in x["ivy_files"]}),
    }
    c = r["pathling_cold_query"]
    c["rss"] = f"JVM {mib(c['jvm_peak_rss'])} + driver {mib(c['driver_peak_rss'])}"
    r["versions"] = cold[-1]["versions"]
    r["agreement"] = agreement(Path(fc_runs[-1]["out"]) / "candidates.json", work / "pathling.csv")
    r["uptime_after"] = uptime()
    r["ratios"] = {
        "fhir_cohort_vs_bare": r["fhir_cohort"]["seconds"]["best"] / r["bare_parse"]["best"],
        "pathling_import_cold_vs_fhir_cohort": imp["cold_to_csv_s"]
        / r["fhir_cohort"]["seconds"]["best"],
        "pathling_cold_query_vs_fhir_cohort": c["cold_to_csv_s"]["best"]
        / r["fhir_cohort"]["seconds"]["best"],
        "pathling_query_only_vs_fhir_cohort": min(imp["query_only_s"] or [float("nan")])
        / r["fhir_cohort"]["seconds"]["best"],
    }
    print(f"### {args.data.name}: {r['patients']:,} patients, {mib(r['bytes'])} NDJSON\n")
    print(table(r))
    a = r["agreement"]
    print(
        f"\nagreement: pool {a['pool']}, results {a['results']}, "
        f"{'same' if a['agree'] else 'DIFFERENT: ' + json.dumps(a)}"
    )
    print(f"versions: {r['versions']}\nivy files written: {len(c['ivy_files'])}")
    print(f"load: before {r['uptime_before']}\n      after  {r['uptime_after']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2))
    return 0 if a["agree"] else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="population folder")
    parser.add_argument("--repeat", type=int, default=3, help="cold runs of each contestant")
    parser.add_argument("--query-repeat", type=int, default=5, help="Pathling queries after load")
    parser.add_argument("--work", type=Path, help="default bench/data/pathling/<data name>")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--pathling-python", type=Path, default=PATHLING_PYTHON)
    parser.add_argument("--driver-memory", default="8g", help="spark.driver.memory (JVM heap)")
    parser.add_argument(
        "--no-network", action="store_true", help="Pathling in a loopback-only network namespace"
    )
    parser.add_argument(
        "--parquet-exists",
        action="store_true",
        help="reuse the import of an earlier run (its Parquet and pathling-import-0.json)",
    )
    parser.add_argument("--worker", choices=("import", "query"), help=argparse.SUPPRESS)
    for name in ("--parquet", "--csv", "--ivy", "--result"):
        parser.add_argument(name, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return worker(args) if args.worker else orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
