"""Bulk ``$export`` done fully, against ``responses`` fakes of what servers were seen doing
(issue 9, findings 5 to 8): types a server does not hold, Medications it cannot give, a
resumed or failed export, a manifest missing requested types, error files, deletions,
the job released, and ``Retry-After`` as a date.

The export served is the bundled cohort's NDJSON (not its Bundles), so a screen of the
fake server can be compared patient by patient with a screen of the same files. Runs go
through the command line (``main``) with their own state and output folders; nothing
sleeps longer than the fake server's ``Retry-After`` of 0.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import re
import shutil
import time
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from candidate_diff import diff, rule_breaches
from conftest import COHORT

from fhir_cohort.cli import main
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources.bulk import STATE, BulkSource
from fhir_cohort.sources.files import FileSource
from fhir_cohort.transport.client import FhirClient, ServerError

BASE = "https://ehr.example.test/fhir"
STATUS = f"{BASE}/bulkstatus/job"
AS_OF = "2026-06-30"
WASHOUT_BY_MEDICATION = "p104-medication-reference"  # rituximab in a separate Medication


def cohort_files() -> dict[str, bytes]:
    """The bundled cohort's NDJSON, by resource type, uncompressed."""
    files = {}
    for path in sorted(COHORT.glob("*.ndjson*")):
        data = path.read_bytes()
        files[path.name.split(".")[0]] = gzip.decompress(data) if path.suffix == ".gz" else data
    return files


@pytest.fixture(scope="module")
def files_screen(tmp_path_factory, trial) -> dict:
    """candidates.json of the same NDJSON screened as files."""
    folder = tmp_path_factory.mktemp("ndjson")
    for kind, data in cohort_files().items():
        (folder / f"{kind}.ndjson").write_bytes(data)
    return screening_dict(screen([FileSource(folder)], trial, date.fromisoformat(AS_OF)))


class FakeBulk:
    """A Bulk server on ``responses``: it exports ``files`` (those of the types asked
    for), answers the status URL at once, and counts, reads and searches as told."""

    def __init__(self, rsps, files: dict[str, bytes], **options):
        self.rsps, self.files = rsps, dict(files)
        self.refuse: set[str] = options.get("refuse", set())  # kick-off 400 naming a type
        self.listed: set[str] | None = options.get("listed")  # types the manifest keeps
        self.counts: dict[str, int] = options.get("counts", {})
        self.held: dict[str, bytes] = options.get("held", {})  # counted by patient
        self.claimed: dict[str, int] = {}  # an output item's count, where it says one
        self.medications: dict[str, dict] = options.get("medications", {})
        self.errors: bytes | None = options.get("errors")
        self.deleted: bytes | None = options.get("deleted")
        self.pending: dict[str, str] | None = None  # status answers 202 with these headers
        self.unanswered: set[str] = set()  # paths the server never answers
        self.gone: set[str] = set()  # paths the server answers 404 (expired files)
        self.moment = "2026-06-29T00:00:00Z"
        rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/.*"), self.answer)
        rsps.add_callback(responses.DELETE, STATUS, lambda r: (202, {}, ""))
        rsps.add_callback(
            responses.POST, re.compile(re.escape(BASE) + r"/\w+/_search$"), self.answer
        )

    def kickoffs(self) -> list[dict[str, list[str]]]:
        return [
            parse_qs(urlsplit(c.request.url).query)
            for c in self.rsps.calls
            if urlsplit(c.request.url).path.endswith("$export")
        ]

    def answer(self, request):
        url = urlsplit(request.url)
        path = url.path[len("/fhir/") :].removesuffix("/_search")
        query = {k: v[0] for k, v in parse_qs(url.query or form(request)).items()}
        if path in self.unanswered:
            raise requests.ConnectionError("connection reset by peer")
        if path in self.gone:
            return 404, {}, json.dumps(outcome("expired"))
        if path.endswith("$export"):
            return self.kick_off(query)
        if path == "bulkstatus/job":
            if self.pending is not None:
                return 202, self.pending, ""
            return 200, {}, json.dumps(self.manifest())
        if path.startswith("files/"):
            name = path[len("files/") :]
            body = {"errors": self.errors, "deleted": self.deleted}.get(name)
            return 200, {}, body if body is not None else self.files[name]
        if query.get("_summary") == "count" and "patient" in query:
            asked = set(query["patient"].split(","))
            return 200, {}, json.dumps(searchset([], total=owned(self.held[path], asked)))
        if query.get("_summary") == "count":
            if path not in self.counts:
                return 404, {}, json.dumps(outcome(f"unknown type {path}"))
            return 200, {}, json.dumps(searchset([], total=self.counts[path]))
        if path == "Medication" and "_id" in query:
            return 404, {}, json.dumps(outcome("Resource type Medication is not supported"))
        if path.startswith("Medication/"):
            found = self.medications.get(path[len("Medication/") :])
            return (200, {}, json.dumps(found)) if found else (404, {}, json.dumps(outcome("gone")))
        return 404, {}, json.dumps(outcome(f"no route for {path}"))

    def kick_off(self, query: dict[str, str]):
        asked = query["_type"].split(",")
        for kind in asked:
            if kind in self.refuse:
                text = f'The requested resource type "{kind}" is not available on this server'
                return 400, {}, json.dumps(outcome(text))
        self.asked = asked
        self.since = query.get("_since")
        return 202, {"Content-Location": STATUS}, ""

    def manifest(self) -> dict:
        kinds = [k for k in self.asked if k in self.files]
        if self.listed is not None:
            kinds = [k for k in kinds if k in self.listed]
        body = {
            "transactionTime": self.moment,
            "request": f"{BASE}/$export",
            "requiresAccessToken": False,
            "output": [
                {"type": k, "url": f"{BASE}/files/{k}"}
                | ({"count": self.claimed[k]} if k in self.claimed else {})
                for k in kinds
            ],
            "error": [{"type": "OperationOutcome", "url": f"{BASE}/files/errors"}]
            if self.errors
            else [],
        }
        if self.deleted:
            body["deleted"] = [{"type": "Bundle", "url": f"{BASE}/files/deleted"}]
        return body


def owned(ndjson: bytes, references: set[str]) -> int:
    """How many resources of an NDJSON file have a subject among ``references``."""
    lines = (json.loads(line) for line in ndjson.splitlines() if line.strip())
    return sum(r.get("subject", {}).get("reference") in references for r in lines)


def form(request) -> str:
    body = request.body or ""
    return body.decode() if isinstance(body, bytes) else body


def outcome(text: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-supported", "diagnostics": text}],
    }


def searchset(resources: list, total: int | None = None) -> dict:
    body = {"resourceType": "Bundle", "type": "searchset", "entry": resources}
    return body if total is None else {**body, "total": total}


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def run(tmp_path: Path, name: str, *extra: str) -> tuple[int, dict | None]:
    """One screen of the fake server from the command line: exit code, candidates.json."""
    out = tmp_path / name
    code = main(
        [
            "screen",
            "--server",
            BASE,
            "--as-of",
            AS_OF,
            "--state",
            str(tmp_path / "state"),
            "--out",
            str(out),
            "--quiet",
            "--max-retries",
            "0",
            *extra,
        ]
    )
    written = out / "candidates.json"
    return code, json.loads(written.read_text()) if written.exists() else None


def quality(output: dict, code: str) -> list[str]:
    return [
        f"{e['where']}: {e['message']}"
        for q in output["data_quality"]
        if q["code"] == code
        for e in q["examples"]
    ]


def statuses(output: dict) -> dict[str, str]:
    return {c["patient"]: c["status"] for c in output["candidates"]}


def without_medication_file() -> dict[str, bytes]:
    """A Patient-level export's usual shape: the Medication resources left out."""
    return {k: v for k, v in cohort_files().items() if k != "Medication"}


# -- finding 6: a Medication neither exported nor readable ------------------------
def test_unreadable_medication_is_partial_for_its_patients_not_a_failed_run(
    rsps, tmp_path, files_screen
):
    """Finding 6: a Medication not in the export and 404 by search and by read made the
    whole Patient-level run exit 3. Now only the patient whose record references it is
    needs-review, with the reason, and the run exits 4 with everyone else as from files."""
    FakeBulk(rsps, without_medication_file())
    code, output = run(tmp_path, "out", "--bulk", "patient")
    assert code == 4
    differences = diff(files_screen, output)
    assert [(d.patient, d.reference.status, d.other.status) for d in differences] == [
        (WASHOUT_BY_MEDICATION, "washout", "needs-review")
    ]
    assert rule_breaches(files_screen, output, code) == []
    (patient,) = [c for c in output["candidates"] if c["patient"] == WASHOUT_BY_MEDICATION]
    assert any("Medication/med-rituximab" in r and "HTTP 404" in r for r in patient["reasons"])
    (note,) = quality(output, "missing-record")
    assert "Medication/med-rituximab" in note and "1 patient(s)" in note
    plan = output["retrieval"]["plan"]
    assert (plan["bulk"], plan["medications_not_found"]) == ("patient", ["med-rituximab"])
    # searched by id, then read by id, both refused: nothing else was asked
    asked = [
        path
        for path in (urlsplit(c.request.url).path for c in rsps.calls)
        if path.startswith("/fhir/Medication")
    ]
    assert asked == ["/fhir/Medication", "/fhir/Medication/med-rituximab"]


def test_medication_readable_by_id_where_the_search_is_refused(rsps, tmp_path, files_screen):
    """A server refusing `Medication?_id=` but reading `Medication/<id>`: the export is
    complete, and the run exits 0 with exactly the file screen's list."""
    rituximab = json.loads(cohort_files()["Medication"].splitlines()[0])
    FakeBulk(rsps, without_medication_file(), medications={"med-rituximab": rituximab})
    code, output = run(tmp_path, "out", "--bulk", "patient")
    assert (code, diff(files_screen, output)) == (0, [])


# -- finding 7: a failed or partial run is never a baseline ------------------------
def test_failed_and_partial_runs_never_become_the_baseline(rsps, tmp_path, files_screen):
    """Finding 7: after the run of finding 6 (then exit 3), the next run 'resumed', saved an
    empty baseline as valid (exit 2), and the run after that pulled `_since` it and exited
    0 having read 1 patient. Now: partial runs keep no baseline, every run until a complete
    one exports in full, and only a complete run's export is built on."""
    server = FakeBulk(rsps, without_medication_file())
    first, _ = run(tmp_path, "first", "--bulk", "patient")
    second, output = run(tmp_path, "second", "--bulk", "patient")
    assert (first, second) == (4, 4)
    assert [diff.patient for diff in diff(files_screen, output)] == [WASHOUT_BY_MEDICATION]
    assert all("_since" not in k for k in server.kickoffs())  # nothing complete to build on

    # The Medication becomes readable: a complete run, exported in full.
    rituximab = json.loads(cohort_files()["Medication"].splitlines()[0])
    server.medications["med-rituximab"] = rituximab
    third, output = run(tmp_path, "third", "--bulk", "patient")
    assert third == 0 and diff(files_screen, output) == []
    assert "_since" not in server.kickoffs()[-1]
    assert output["funnel"]["patients_read"] == files_screen["funnel"]["patients_read"]

    # Only now does a run build on the baseline, and nothing changed: the same answer.
    server.moment, server.files = "2026-06-30T00:00:00Z", {}
    fourth, output = run(tmp_path, "fourth", "--bulk", "patient")
    assert server.kickoffs()[-1]["_since"] == ["2026-06-29T00:00:00.000Z"]
    assert fourth == 0 and diff(files_screen, output) == []
    assert output["funnel"]["patients_read"] == files_screen["funnel"]["patients_read"]


def test_run_failing_after_download_resumes_its_export_and_keeps_the_baseline(
    rsps, tmp_path, trial
):
    """Finding 7, at the source: a run that stops after its files are downloaded (here:
    no answer while reading a Medication) leaves the baseline of the last complete run
    exactly as it was; the next run resumes and screens the same export, never an empty
    folder."""
    rituximab = json.loads(cohort_files()["Medication"].splitlines()[0])
    server = FakeBulk(rsps, without_medication_file(), medications={"med-rituximab": rituximab})
    folder = tmp_path / "bulk"

    def source(incremental: bool = True) -> BulkSource:
        client = FhirClient(BASE, max_retries=0)
        return BulkSource(client, trial.server, folder, level="patient", incremental=incremental)

    first = source()
    assert len(list(first.read(lambda n: None, lambda n: None))) > 800
    first.settle(complete=True)
    baseline = {p.name: p.read_bytes() for p in (folder / "baseline").iterdir()}
    kept = json.loads((folder / STATE).read_text())

    server.moment = "2026-06-30T00:00:00Z"
    server.unanswered.add("Medication/med-rituximab")
    failing = source(incremental=False)  # a full export: the Medication is read again
    with pytest.raises(ServerError, match="no answer"):
        list(failing.read(lambda n: None, lambda n: None))
    assert {p.name: p.read_bytes() for p in (folder / "baseline").iterdir()} == baseline
    assert json.loads((folder / STATE).read_text())["baseline"] == kept["baseline"]

    server.unanswered.clear()
    kickoffs = len(server.kickoffs())
    resumed = source(incremental=False)
    raws = list(resumed.read(lambda n: None, lambda n: None))
    assert len(server.kickoffs()) == kickoffs  # resumed, not exported again
    assert len(raws) > 800 and {r.resource.get("id") for r in raws} >= {"med-rituximab"}
    resumed.settle(complete=True)
    assert json.loads((folder / STATE).read_text())["baseline"]["transactionTime"] == (
        "2026-06-30T00:00:00Z"
    )


def test_full_export_listing_nothing_fails_and_keeps_the_baseline(rsps, tmp_path, trial):
    """Finding 7: an export that finds nothing is a failure (exit 3, one line), never an
    empty baseline."""
    server = FakeBulk(rsps, cohort_files())
    first, _ = run(tmp_path, "first", "--bulk", "system")
    assert first == 0
    (folder,) = (tmp_path / "state" / "bulk").iterdir()
    before = sorted(p.name for p in (folder / "baseline").iterdir())
    server.files = {}
    server.moment = "2026-06-30T00:00:00Z"
    code, _ = run(tmp_path, "second", "--bulk", "system", "--full")
    assert code == 3
    assert sorted(p.name for p in (folder / "baseline").iterdir()) == before
    state = json.loads((folder / STATE).read_text())
    assert state["baseline"]["transactionTime"] == "2026-06-29T00:00:00Z" and "job" not in state


# -- finding 5: types the server does not hold -------------------------------------
def test_kickoff_refusing_types_is_retried_without_them(rsps, tmp_path, files_screen):
    """Finding 5: a server holding no Medication, MedicationAdministration or
    MedicationStatement refuses the kick-off with 400 naming one type; the run exited 3
    with nothing. Now each named type is left out and the kick-off sent again; the
    medication types the trial reads are `missing-data` (exit 4, every candidate to
    review, never eligible or washout); Medication alone is not (it is only read through
    references)."""
    medication_types = {"Medication", "MedicationAdministration", "MedicationStatement"}
    files = {k: v for k, v in cohort_files().items() if k not in medication_types}
    server = FakeBulk(rsps, files, refuse=medication_types)
    code, output = run(tmp_path, "out", "--bulk", "system")
    assert code == 4
    sent = [set(k["_type"][0].split(",")) for k in server.kickoffs()]
    assert len(sent) == 4 and not sent[-1] & medication_types
    notes = quality(output, "missing-data")
    assert len(notes) == 2
    assert all("refused it at kick-off" in n for n in notes)
    assert {n.split(" records")[0].split(": ")[-1] for n in notes} == {
        "MedicationAdministration",
        "MedicationStatement",
    }
    assert set(statuses(output).values()) <= {"needs-review", "excluded"}
    assert [d for d in diff(files_screen, output) if d.favourable] == []
    plan = output["retrieval"]["plan"]  # candidates.json says what was asked and left out
    assert set(plan["left_out"]) == medication_types
    assert not set(plan["types"]) & medication_types


def test_capability_statement_limits_the_types_asked_for(rsps, tmp_path):
    """Finding 5: `_type` holds only the types the CapabilityStatement lists; a type the
    trial reads that is not listed is `missing-data`."""
    offered = ["Condition", "MedicationRequest", "Observation", "Patient", "Procedure"]
    capabilities = {
        "resourceType": "CapabilityStatement",
        "rest": [{"mode": "server", "resource": [{"type": t} for t in offered]}],
    }
    rsps.get(f"{BASE}/metadata", json=capabilities)
    server = FakeBulk(rsps, {k: v for k, v in cohort_files().items() if k in offered})
    code, output = run(tmp_path, "out", "--bulk", "system")
    assert code == 4
    assert [k["_type"][0].split(",") for k in server.kickoffs()] == [offered]
    notes = quality(output, "missing-data")
    assert len(notes) == 2 and all("CapabilityStatement does not list it" in n for n in notes)


# -- finding 8: a manifest missing requested types ----------------------------------
def test_manifest_missing_requested_types_is_partial(rsps, tmp_path, files_screen):
    """Finding 8: with `_typeFilter`, a server listed only Condition, Medication and
    MedicationAdministration, and the run exited 0 with 36 of 115 right. Now each
    requested type absent from the manifest is counted on the server; one it holds is
    `missing-data` (exit 4, every candidate to review)."""
    held = {k: len(v.splitlines()) for k, v in cohort_files().items()}
    server = FakeBulk(
        rsps,
        cohort_files(),
        listed={"Condition", "Medication", "MedicationAdministration"},
        counts=held,
    )
    code, output = run(tmp_path, "out", "--bulk", "system", "--type-filter")
    assert code == 4
    assert "_typeFilter" in server.kickoffs()[0]
    notes = quality(output, "missing-data")
    missing = {n.split(" was requested")[0].split(": ")[-1] for n in notes}
    assert missing == {
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Patient",
        "Procedure",
    }
    assert any(f"the server holds {held['Patient']}" in n for n in notes)
    (observations,) = [  # counted with the same code filter the export was given
        c.request for c in rsps.calls if "/fhir/Observation" in c.request.url
    ]
    counted = parse_qs(urlsplit(observations.url).query or form(observations))
    exported = server.kickoffs()[0]["_typeFilter"][0]
    assert counted["_summary"] == ["count"]
    assert exported == "Observation?code=" + counted["code"][0]
    # Every candidate it could list is to review; none looks more eligible than by files.
    assert set(statuses(output).values()) <= {"needs-review", "excluded"}
    assert [d for d in diff(files_screen, output) if d.favourable] == []


def test_absent_type_the_server_holds_none_of_is_fine(rsps, tmp_path, files_screen):
    """Servers leave a type with no data out of the manifest: a count of 0 confirms it,
    and the run stays complete; a type whose count cannot be had is `missing-data`."""
    files = cohort_files()
    del files["Procedure"]  # served in no file
    server = FakeBulk(rsps, files, counts={"Procedure": 0})
    code, output = run(tmp_path, "empty", "--bulk", "system")
    assert code == 0 and quality(output, "missing-data") == []
    server.counts = {}
    code, output = run(tmp_path, "unknown", "--bulk", "system", "--full")
    assert code == 4
    (note,) = quality(output, "missing-data")
    assert "Procedure was requested" in note and "cannot say how many" in note


# -- error files, deletions, DELETE, Retry-After -----------------------------------------
def test_error_files_are_summarised_and_make_the_run_partial(rsps, tmp_path):
    errors = b"".join(
        json.dumps(outcome(f"Observation/o{i} could not be serialised")).encode() + b"\n"
        for i in range(5)
    )
    FakeBulk(rsps, cohort_files(), errors=errors)
    code, output = run(tmp_path, "out", "--bulk", "system")
    assert code == 4
    (note,) = quality(output, "export-error")
    assert "lists 5 errors" in note
    assert "Observation/o0 could not be serialised; Observation/o1" in note
    assert "Observation/o3" not in note  # the first three only


def test_error_file_of_warnings_only_is_told_and_the_run_complete(rsps, tmp_path, files_screen):
    """The spec lets `error` files hold information too: warnings are told in
    data_quality, and leave the run complete."""
    notice = outcome("export took 3 s")
    notice["issue"][0]["severity"] = "information"
    FakeBulk(rsps, cohort_files(), errors=json.dumps(notice).encode() + b"\n")
    code, output = run(tmp_path, "out", "--bulk", "system")
    assert (code, diff(files_screen, output)) == (0, [])
    assert quality(output, "server-warning") == [
        "bulk export error file 1 of 1: the export's error file lists 1 warnings, first: "
        "export took 3 s"
    ]


def test_retry_after_of_hours_stops_at_max_wait_and_keeps_the_job(rsps, tmp_path, trial):
    """Large EHRs ask for hours: the run waits no longer than --max-wait, then stops with
    the job kept for the next run."""
    server = FakeBulk(rsps, cohort_files())
    server.pending = {"Retry-After": "18000"}
    client = FhirClient(BASE, max_retries=0, max_wait=90)
    waits: list[float] = []
    client.pause = lambda seconds, why: waits.append(seconds)  # type: ignore[method-assign]
    with pytest.raises(ServerError, match="still running after 90 s"):
        BulkSource(client, trial.server, tmp_path / "b").export(lambda n: None, lambda n: None)
    assert waits[0] == pytest.approx(90, abs=1) and sum(waits) == pytest.approx(90)


def test_deleted_resources_leave_the_baseline_on_an_incremental_run(rsps, tmp_path, trial):
    """The manifest's `deleted` Bundles are applied: a resource deleted since the last
    run is no longer screened; a resource changed replaces its copy."""
    server = FakeBulk(rsps, cohort_files())
    folder = tmp_path / "bulk"

    def source() -> BulkSource:
        return BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)

    first = source()
    before = {(r.resource["resourceType"], r.resource["id"]) for r in first.read(print, print)}
    first.settle(complete=True)
    gone = sorted(k for k in before if k[0] == "Condition")[:2]
    assert len(gone) == 2
    server.deleted = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"request": {"method": "DELETE", "url": f"{kind}/{rid}"}} for kind, rid in gone
            ],
        }
    ).encode()
    server.files = {}
    server.moment = "2026-06-30T00:00:00Z"
    again = source()
    after = {(r.resource["resourceType"], r.resource["id"]) for r in again.read(print, print)}
    assert again.pull.startswith("incremental")
    assert after == before - set(gone)
    again.settle(complete=True)
    third = source()
    server.deleted = None
    assert {(r.resource["resourceType"], r.resource["id"]) for r in third.read(print, print)} == (
        before - set(gone)
    )


def test_refused_delete_of_the_job_is_told_not_fatal(rsps, tmp_path, trial):
    FakeBulk(rsps, cohort_files())
    rsps.replace(responses.DELETE, STATUS, status=500)
    told: list[str] = []
    source = BulkSource(
        FhirClient(BASE, max_retries=0), trial.server, tmp_path / "b", on_status=told.append
    )
    assert len(list(source.read(lambda n: None, lambda n: None))) > 800
    deletes = [c for c in rsps.calls if c.request.method == "DELETE"]
    assert [c.request.url for c in deletes] == [STATUS]
    assert any("did not release the export" in t for t in told)


def test_retry_after_as_an_http_date_sets_the_poll_interval(rsps, tmp_path, trial):
    """`Retry-After` as an HTTP date is read as seconds from now; polling stops at
    `--max-wait` (the job kept for the next run)."""
    server = FakeBulk(rsps, cohort_files())
    server.pending = {"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)}
    client = FhirClient(BASE, max_retries=0, max_wait=60)
    waits: list[float] = []
    client.pause = lambda seconds, why: waits.append(seconds)  # type: ignore[method-assign]
    folder = tmp_path / "b"
    with pytest.raises(ServerError, match="still running after 60 s"):
        BulkSource(client, trial.server, folder).export(lambda n: None, lambda n: None)
    assert 25 <= waits[0] <= 31
    assert sum(waits) == pytest.approx(60)
    assert json.loads((folder / STATE).read_text())["job"]["status_url"] == STATUS


def test_dry_run_says_what_a_bulk_screen_would_ask(rsps, tmp_path, capsys):
    """`screen --bulk --dry-run` printed nothing useful (it crashed, exit 1); now it lists
    the export's steps and sends nothing."""
    command = ["screen", "--server", BASE, "--bulk", "group:g1", "--dry-run"]
    assert main([*command, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"server {BASE}/"
    assert printed[2].startswith("2. kick off a Bulk export: GET Group/g1/$export?_type=")
    assert "_since" not in printed[2] and "in full" in printed[2]
    assert len(rsps.calls) == 0


def test_expired_export_files_start_a_new_export_next_time(rsps, tmp_path, files_screen):
    """A file the server no longer has (404) cannot be resumed for ever: the job is dropped
    (exit 3 now), and the next run exports again."""
    server = FakeBulk(rsps, cohort_files())
    server.gone.add("files/Observation")
    code, _ = run(tmp_path, "first", "--bulk", "system")
    assert code == 3
    server.gone.clear()
    code, output = run(tmp_path, "second", "--bulk", "system")
    assert (code, len(server.kickoffs()), diff(files_screen, output)) == (0, 2, [])


def test_baseline_folder_gone_means_a_full_export(rsps, tmp_path, trial):
    FakeBulk(rsps, cohort_files())
    folder = tmp_path / "bulk"
    first = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    list(first.read(lambda n: None, lambda n: None))
    first.settle(complete=True)
    shutil.rmtree(folder / "baseline")
    again = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    assert len(list(again.read(lambda n: None, lambda n: None))) > 800
    assert again.pull == "full (the earlier export's files are gone from this folder)"


def test_unreadable_deleted_file_is_an_export_error(rsps, tmp_path, trial):
    """Deletions that cannot be read may leave deleted records screened: partial."""
    server = FakeBulk(rsps, cohort_files())
    folder = tmp_path / "bulk"
    first = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    list(first.read(lambda n: None, lambda n: None))
    first.settle(complete=True)
    server.files, server.deleted = {}, b"this is not a Bundle\n"
    notes: list = []
    again = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    list(again.read(notes.append, lambda n: None))
    (note,) = [n for n in notes if n.code == "export-error"]
    assert "1 of its lines are not a Bundle" in note.message


def test_screened_export_whose_files_vanished_is_exported_again(rsps, tmp_path, trial):
    """A run that died after staging resumes by screening the staged export; when that
    folder is gone the job is not resumed into an empty screen, a new export starts."""
    server = FakeBulk(rsps, cohort_files())
    folder = tmp_path / "bulk"
    first = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    screened = len(list(first.read(lambda n: None, lambda n: None)))  # never settled
    resumed = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    assert len(list(resumed.read(lambda n: None, lambda n: None))) == screened
    assert len(server.kickoffs()) == 1
    shutil.rmtree(folder / "staged")
    again = BulkSource(FhirClient(BASE, max_retries=0), trial.server, folder)
    assert len(list(again.read(lambda n: None, lambda n: None))) == screened
    assert len(server.kickoffs()) == 2


def test_group_export_missing_a_type_is_counted_among_its_members(rsps, tmp_path, trial):
    """Finding 8 at Group level: an absent type is counted for the exported members only
    (typed references, 50 a request): none of theirs is fine, some is missing-data."""
    files = cohort_files()
    procedures = files.pop("Procedure")
    owners = {json.loads(line)["subject"]["reference"][8:] for line in procedures.splitlines()}
    patients = [json.loads(line) for line in files["Patient"].splitlines()]

    server = FakeBulk(rsps, files, held={"Procedure": procedures})

    def export(members: list[dict]) -> list:
        server.files["Patient"] = b"\n".join(json.dumps(m).encode() for m in members)
        notes: list = []
        source = BulkSource(
            FhirClient(BASE, max_retries=0), trial.server, tmp_path / "g", level="group:g1"
        )
        list(source.read(notes.append, lambda n: None))
        shutil.rmtree(tmp_path / "g")
        return [n.message for n in notes if n.code == "missing-data"]

    assert export([p for p in patients if p["id"] not in owners]) == []
    asked = [parse_qs(urlsplit(c.request.url).query) for c in rsps.calls]
    batches = [q["patient"][0].split(",") for q in asked if "patient" in q]
    assert batches and max(map(len, batches)) == 50
    assert all(ref.startswith("Patient/") for batch in batches for ref in batch)
    (note,) = export(patients)
    assert f"the server holds {len(procedures.splitlines())} for the group's" in note


def test_file_shorter_than_its_manifest_count_is_partial(rsps, tmp_path, files_screen):
    """A run is never done with fewer records than the server said it had: an output
    item's `count` is checked against the file downloaded."""
    server = FakeBulk(rsps, cohort_files())
    lines = {k: len(v.splitlines()) for k, v in cohort_files().items()}
    server.claimed = {"Patient": lines["Patient"], "Observation": lines["Observation"] + 3}
    code, output = run(tmp_path, "out", "--bulk", "system")
    assert code == 4
    assert quality(output, "export-error") == [
        f"bulk export manifest: the export's Observation file holds {lines['Observation']} "
        f"resources where the manifest says {lines['Observation'] + 3}: records may be missing"
    ]
    assert [d for d in diff(files_screen, output) if d.favourable] == []
