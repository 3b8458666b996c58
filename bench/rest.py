"""Benchmark: screening over REST and Bulk from a real local FHIR server, against files.

    python bench/rest.py --patients 2000 --repeat 2 --json bench/data/rest-2000.json

In this one process:

1. generate a *light* synthetic population (about 30 resources per patient, 5 %
   lupus patients) into ``bench/data/rest-<N>/`` with the builders of
   ``bench/generate_population.py`` (deterministic: same arguments, same files);
2. start sekmet-fhir on 127.0.0.1 in a temporary folder (``tests/sekmet_server.py``)
   and seed it with ``fhir_cohort.commands.seed.seed`` (timed once);
3. time, best of ``--repeat`` wall-clock runs (``time.perf_counter``):

   * files: ``screen([FileSource(folder)], load_trial("misle"), date(2026, 6, 30))``;
   * REST: ``screen([RestSource(FhirClient(base, concurrency=c), trial.server,
     concurrency=c)], ...)`` for each ``--concurrency`` (default 1 and 4);
   * Bulk: ``screen([BulkSource(FhirClient(base), trial.server, tmpdir, level="system")],
     ...)``, a fresh download folder per run;
   * the next night's incremental runs, nothing having changed since: REST with
     ``since`` set after the seeding and ``known`` the pool a full REST run found
     (``_lastUpdated`` on the candidate searches, the pool fetched again), and
     Bulk on a folder holding a baseline export (a ``_since`` export, merged);

4. check that every run lists the same candidates (patient id and status, in rank
   order) and the same funnel status counts as the file screen; stop with an
   error if not.

Reported for each: seconds, the ratio to the file screen, HTTP requests, requests
per fetched patient and patients fetched (from ``Screening.retrieval``; a Bulk
export fetches every patient, counted as the Patient resources read), and the
CPU seconds spent in this process (the client) and in the server process, from
``/proc``, to show which side the time goes to.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import tempfile
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import generate_population as gp  # noqa: E402
from sekmet_server import sekmet  # noqa: E402

from fhir_cohort.commands.seed import seed  # noqa: E402
from fhir_cohort.criteria.language import load as load_trial  # noqa: E402
from fhir_cohort.pipeline import Screening, screen  # noqa: E402
from fhir_cohort.sources.bulk import BulkSource  # noqa: E402
from fhir_cohort.sources.files import FileSource  # noqa: E402
from fhir_cohort.sources.rest import RestSource  # noqa: E402
from fhir_cohort.transport.client import FhirClient  # noqa: E402

AS_OF = date(2026, 6, 30)
TRIAL = "misle"
LIGHT_VITALS = [spec for spec in gp.VITALS if spec[0] in ("8867-4", "8480-6", "8462-4", "8310-5")]


# -- the light population --------------------------------------------------------
def light_person(gen: gp.Generator, lupus: bool) -> dict[str, list[dict]]:
    """One patient with ~30 resources: 2-4 encounters of 4 vital signs (temperature
    included), a CBC in half of them (always one for a lupus patient), 2-5
    Conditions, 2-4 MedicationRequests, 1-3 Procedures, and for a lupus patient
    the same evidence as the big benchmark (``Generator.lupus_evidence``)."""
    rng = gen.rng
    pid, first, out = gen.start_person(lupus)
    obs = out["Observation"]
    encounters: list[tuple[str, date]] = []
    count = rng.randrange(2, 5)
    for index in range(count):
        enc, d = gen.uuid(), gen.day(first, AS_OF)
        encounters.append((enc, d))
        when, updated = gen.stamp(d), gen.updated(d)
        for spec in LIGHT_VITALS:
            obs.append(gen.measured(pid, enc, when, updated, "vital-signs", spec))
        if rng.random() < 0.5 or (lupus and index == count - 1):
            for spec in gp.CBC:
                override = None
                if lupus and spec[0] == "6690-2":
                    override = round(rng.uniform(2.8, 3.9), 1)
                obs.append(gen.measured(pid, enc, when, updated, "laboratory", spec, override))
    for _ in range(rng.randrange(2, 6)):
        code, display, _w = rng.choices(gp.CONDITIONS, cum_weights=gp.CONDITION_WEIGHTS)[0]
        enc, d = rng.choice(encounters)
        out["Condition"].append(gen.condition(pid, enc, code, display, d, rng.random() < 0.5))
    for _ in range(rng.randrange(2, 5)):
        code, display = rng.choice(gp.MEDICATIONS)
        enc, d = rng.choice(encounters)
        out["MedicationRequest"].append(gen.medication_request(pid, enc, code, display, d))
    for _ in range(rng.randrange(1, 4)):
        code, display = rng.choice(gp.PROCEDURES)
        enc, d = rng.choice(encounters)
        out["Procedure"].append(gen.procedure(pid, enc, code, display, d))
    if lupus:
        gen.lupus_evidence(pid, first, out)
    return out


def generate_light(patients: int, out: Path, seed_value: int, lupus_rate: float) -> dict:
    import random

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.ndjson"):
        old.unlink()
    gen = gp.Generator(seed_value)
    n_lupus = max(1, round(patients * lupus_rate)) if lupus_rate > 0 else 0
    lupus_index = set(random.Random(seed_value + 1).sample(range(patients), n_lupus))
    writer = gp.Writer(out, 500_000)
    started = time.perf_counter()
    for i in range(patients):
        for rtype, resources in light_person(gen, i in lupus_index).items():
            writer.write(rtype, resources)
    writer.close()
    return gp.write_info(
        out,
        writer,
        started,
        generator="bench/rest.py light_person",
        patients=patients,
        lupus_patients=n_lupus,
        seed=seed_value,
    )


# -- CPU time of this process and of the server -------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user+system CPU seconds) for every process we can read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return table


def server_cpu() -> float:
    """CPU seconds of every descendant of this process: the sekmet server."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, list(children.get(os.getpid(), ()))
    while stack:
        pid = stack.pop()
        total += table[pid][1]
        stack += children.get(pid, ())
    return total


# -- helpers ----------------------------------------------------------------------
def machine_info() -> dict:
    spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    info = module.machine_info()
    try:
        info["sekmet-fhir"] = metadata.version("sekmet-fhir")
    except metadata.PackageNotFoundError:
        info["sekmet-fhir"] = None
    return info


def signature(result: Screening) -> dict:
    return {
        "candidates": [(c.result.patient, c.result.status) for c in result.candidates],
        "status": result.funnel.to_dict()["status"],
        "patients_read": result.funnel.patients_read,
    }


def timed(label: str, repeat: int, run) -> dict:
    """Best of ``repeat``: seconds, client and server CPU, and the best run's screening."""
    best: dict | None = None
    for i in range(repeat):
        gc.collect()
        server0, client0 = server_cpu(), time.process_time()
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        client_ = None
        if isinstance(result, tuple):
            result, client_ = result
        client, server = time.process_time() - client0, server_cpu() - server0
        print(
            f"  {label} run {i + 1}/{repeat}: {seconds:.2f} s "
            f"(client CPU {client:.2f} s, server CPU {server:.2f} s)",
            file=sys.stderr,
            flush=True,
        )
        if best is None or seconds < best["seconds"]:
            best = {
                "seconds": seconds,
                "client_cpu": client,
                "server_cpu": server,
                "screening": result,
                "requests_by_kind": dict(sorted(client_.counter.by_kind.items()))
                if client_
                else {},
            }
    assert best is not None
    return best


def check_same(reference: dict, label: str, other: dict) -> None:
    problems = []
    if other["candidates"] != reference["candidates"]:
        want, got = set(reference["candidates"]), set(other["candidates"])
        problems.append(
            f"candidates differ: {len(got)} listed against {len(want)} from files; "
            f"missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]}"
            + ("" if want != got else " (same set, different order)")
        )
    if other["status"] != reference["status"]:
        problems.append(f"funnel status {other['status']} != files {reference['status']}")
    if problems:
        raise SystemExit(
            f"MISMATCH: {label} does not match the file screen: " + "; ".join(problems)
        )


def row(label: str, measured: dict, files_seconds: float) -> dict:
    screening: Screening = measured["screening"]
    retrieval = dict(screening.retrieval)
    requests = retrieval.get("http_requests", 0)
    fetched = retrieval.get("patients_fetched")
    if fetched is None and requests:  # Bulk: the export holds every patient
        fetched = screening.funnel.resources_read.get("Patient", 0)
    return {
        "method": label,
        "seconds": round(measured["seconds"], 3),
        "ratio_to_files": round(measured["seconds"] / files_seconds, 2),
        "http_requests": requests,
        "http_retries": retrieval.get("http_retries", 0),
        "patients_fetched": fetched,
        "requests_per_fetched_patient": (
            round(requests / fetched, 3) if requests and fetched else None
        ),
        "client_cpu_seconds": round(measured["client_cpu"], 2),
        "server_cpu_seconds": round(measured["server_cpu"], 2),
        "retrieval": retrieval,
        "requests_by_kind": measured["requests_by_kind"],
    }


def markdown(result: dict) -> str:
    pop, seeded, m = result["population"], result["seed"], result["machine"]
    lines = [
        f"Population: {pop['patients']:,} patients ({pop['lupus_patients']} lupus), "
        f"{pop['total_resources']:,} resources, {pop['bytes'] / 2**20:.1f} MiB of NDJSON; "
        f"best of {result['repeat']}.",
        "",
        f"Seeding: {seeded['resources']:,} resources in {seeded['transactions']} transactions "
        f"of {seeded['bundle_size']}, {seeded['seconds']:.1f} s, "
        f"**{seeded['resources_per_second']:,.0f} resources/s** "
        f"(client CPU {seeded['client_cpu_seconds']:.1f} s, "
        f"server CPU {seeded['server_cpu_seconds']:.1f} s).",
        "",
        "| method | seconds | × files | HTTP requests | requests / fetched patient "
        "| patients fetched | client CPU s | server CPU s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["runs"]:
        per = r["requests_per_fetched_patient"]
        lines.append(
            f"| {r['method']} | {r['seconds']:.2f} | {r['ratio_to_files']:.2f}× "
            f"| {r['http_requests']:,} | {per if per is not None else '–'} "
            f"| {r['patients_fetched'] if r['patients_fetched'] is not None else '–'} "
            f"| {r['client_cpu_seconds']:.2f} | {r['server_cpu_seconds']:.2f} |"
        )
    kinds = [
        f"{r['method']}: "
        + ", ".join(f"{kind} {count}" for kind, count in r["requests_by_kind"].items())
        for r in result["runs"]
        if r["requests_by_kind"]
    ]
    if kinds:
        lines += ["", "Requests by purpose: " + "; ".join(kinds) + "."]
    o = result["outcome"]
    lines += [
        "",
        f"All {len(result['runs'])} methods list the same {o['candidates']} candidates "
        f"(patient id and status, in rank order) and the same funnel: {o['status']}.",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs "
        f"({m['usable_cpus']} usable), {m['memory_bytes'] / 2**30:.1f} GiB RAM; {m['os']}; "
        f"Python {m['python']}, SQLite {m['sqlite']}, sekmet-fhir {m['sekmet-fhir']}, "
        f"fhir-cohort {m['fhir_cohort']} (git {m['git']}). "
        "Client and server share the machine.",
    ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--lupus-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=20260630)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--concurrency", default="1,4", help="REST fetch concurrencies, comma-separated"
    )
    parser.add_argument("--data", type=Path, default=None, help="default bench/data/rest-<N>")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    folder = args.data or HERE / "data" / f"rest-{args.patients}"

    machine = machine_info()
    population = generate_light(args.patients, folder, args.seed, args.lupus_rate)
    print(
        f"{folder}: {population['patients']:,} patients, "
        f"{population['total_resources']:,} resources, {population['seconds']} s",
        file=sys.stderr,
        flush=True,
    )
    trial = load_trial(TRIAL)

    with tempfile.TemporaryDirectory(prefix="fhir-cohort-bench-rest-") as tmp:
        tmp_path = Path(tmp)
        server_folder = tmp_path / "sekmet"
        server_folder.mkdir()
        with sekmet(server_folder) as base:
            print(f"sekmet at {base}; seeding ...", file=sys.stderr, flush=True)
            from fhir_cohort.commands.seed import BUNDLE_SIZE

            server0, client0 = server_cpu(), time.process_time()
            started = time.perf_counter()
            report = seed(FhirClient(base), FileSource(folder))
            seconds = time.perf_counter() - started
            seeded = {
                "resources": report.resources,
                "by_type": report.by_type,
                "transactions": report.transactions,
                "puts": report.puts,
                "bundle_size": BUNDLE_SIZE,
                "seconds": round(seconds, 2),
                "resources_per_second": round(report.resources / seconds, 1),
                "client_cpu_seconds": round(time.process_time() - client0, 2),
                "server_cpu_seconds": round(server_cpu() - server0, 2),
            }
            print(
                f"  seeded {report.resources:,} resources in {seconds:.1f} s "
                f"({seeded['resources_per_second']:,.0f}/s)",
                file=sys.stderr,
                flush=True,
            )

            measured: list[tuple[str, dict]] = []
            files = timed("files", args.repeat, lambda: screen([FileSource(folder)], trial, AS_OF))
            measured.append(("files (FileSource)", files))
            for c in concurrencies:

                def rest(c: int = c) -> tuple[Screening, FhirClient]:
                    client = FhirClient(base, concurrency=c)
                    return screen(
                        [RestSource(client, trial.server, concurrency=c)], trial, AS_OF
                    ), client

                measured.append(
                    (f"REST search, concurrency {c}", timed(f"rest c={c}", args.repeat, rest))
                )
            exports = iter(range(10**6))

            def bulk() -> tuple[Screening, FhirClient]:
                target = tmp_path / f"bulk-{next(exports)}"  # fresh: no resumed export
                client = FhirClient(base)
                source = BulkSource(client, trial.server, target, level="system")
                return screen([source], trial, AS_OF), client

            measured.append(("Bulk $export (system)", timed("bulk", args.repeat, bulk)))

            # the next night: nothing changed since the previous run
            full_rest = RestSource(FhirClient(base), trial.server)
            screen([full_rest], trial, AS_OF)
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            time.sleep(1.1)

            def rest_incremental() -> tuple[Screening, FhirClient]:
                client = FhirClient(base)
                source = RestSource(client, trial.server, since=since, known=full_rest.pool)
                return screen([source], trial, AS_OF), client

            measured.append(
                (
                    "REST, incremental (nothing changed)",
                    timed("rest incremental", args.repeat, rest_incremental),
                )
            )
            baseline = tmp_path / "bulk-baseline"
            first = BulkSource(FhirClient(base), trial.server, baseline)
            screen([first], trial, AS_OF)
            first.settle(complete=True)  # as the command does after a complete run

            def bulk_incremental() -> tuple[Screening, FhirClient]:
                client = FhirClient(base)
                source = BulkSource(client, trial.server, baseline)
                screening = screen([source], trial, AS_OF)
                source.settle(complete=True)
                return screening, client

            measured.append(
                (
                    "Bulk, incremental _since (nothing changed)",
                    timed("bulk incremental", args.repeat, bulk_incremental),
                )
            )

    reference = signature(files["screening"])
    for label, m in measured[1:]:
        check_same(reference, label, signature(m["screening"]))

    result = {
        "benchmark": "bench/rest.py",
        "trial": TRIAL,
        "as_of": AS_OF.isoformat(),
        "repeat": args.repeat,
        "machine": machine,
        "population": {**population, "folder": str(folder)},
        "seed": seeded,
        "runs": [row(label, m, files["seconds"]) for label, m in measured],
        "outcome": {
            "candidates": len(reference["candidates"]),
            "status": reference["status"],
            "patients_read": reference["patients_read"],
            "same_candidates": True,
        },
    }
    table = markdown(result)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
