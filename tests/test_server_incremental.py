"""Incremental screening against a real FHIR server (sekmet-fhir on 127.0.0.1).

Seed the bundled cohort once, screen it, change records on the server (a new
candidate, an HIV result, a corrected lab value, deleted resources), screen
again with the same state, and check the incremental run gives what a
``--full`` run into a fresh state gives, over REST search and over Bulk
``$export``. Also: ``--publish-group`` keeps one Group up to date, and (no
server, ``responses``) a server refusing ``_lastUpdated`` gets full searches.
The tests at the end guard against bugs these tests found (all fixed): a
changed trial definition, read order, a changed Bulk ``_typeFilter``.

What sekmet 0.1.1 does here (checked by ``test_sekmet_lastupdated_meta_and_date``):
``_lastUpdated=gt<instant>`` works on searches, with a code filter and
``_elements=subject``, as GET and as POST ``_search``; a malformed value is a
400. Every write (PUT, transaction) sets ``meta.lastUpdated`` itself (UTC,
milliseconds, ``Z``; a client's value is replaced) and bumps
``meta.versionId``. Answers carry an RFC 7231 ``Date`` header (whole seconds,
GMT). DELETE works (then 410 on read).

The REST checkpoint is the server's Date less a 5-minute margin, so right after
seeding every seeded resource would count as changed and an incremental run
could not differ from a full one. The REST tests shrink the margin to one
second and start once the server's Date header has passed the last write, so
the incremental searches find only what the test changed: the seed plays data
written long before.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from datetime import date, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from fake_fhir import route_searches, search_params
from fhir.resources.R4B.group import Group
from sekmet_server import sekmet

from fhir_cohort.changes import LISTED
from fhir_cohort.cli import main
from fhir_cohort.commands.common import bundled_fixtures
from fhir_cohort.criteria.language import load as load_trial
from fhir_cohort.criteria.language import queries_dir
from fhir_cohort.engines.embedded import screen as run_screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources import rest
from fhir_cohort.sources.bulk import BulkSource
from fhir_cohort.sources.files import FileSource
from fhir_cohort.sources.rest import RestSource, candidate_requests
from fhir_cohort.state import State
from fhir_cohort.transport.client import FhirClient, ServerError

AS_OF = "2026-06-30"
# p01's SLE code, malar rash, arthritis, ANA 1:160, low C3 and anti-dsDNA in the
# window: copied to another patient, they make an eligible candidate.
P01_RECORD = [
    ("Condition", "p01-eligible-baseline-1"),
    ("Condition", "p01-eligible-baseline-2"),
    ("Condition", "p01-eligible-baseline-3"),
    ("Observation", "p01-eligible-baseline-4"),
    ("Observation", "p01-eligible-baseline-5"),
    ("Observation", "p01-eligible-baseline-6"),
]


# -- the server and what is sent to it --------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sekmet-incremental")
    with sekmet(folder) as base:
        assert main(["seed", "--server", base, "--yes"]) == 0
        yield base


@dataclass
class Sent:
    method: str
    kind: str
    params: dict[str, str]
    response: requests.Response


@pytest.fixture
def sent(monkeypatch) -> list[Sent]:
    """Every request fhir-cohort makes in this test, with its parameters and answer."""
    log: list[Sent] = []
    original = FhirClient.request

    def recording(self, method, path, *, kind="other", **kwargs):
        response = original(self, method, path, kind=kind, **kwargs)
        query = parse_qs(urlsplit(self.url(path)).query, keep_blank_values=True)
        params = {k: v[-1] for k, v in query.items()}
        if isinstance(kwargs.get("data"), dict):  # POST Type/_search
            params.update(kwargs["data"])
        log.append(Sent(method, kind, params, response))
        return response

    monkeypatch.setattr(FhirClient, "request", recording)
    return log


def settle(base: str) -> None:
    """Wait until the server's Date header is past every write so far.

    uvicorn refreshes its Date header once a second, so it lags the clock by up
    to a second (on top of cutting it to whole seconds). A checkpoint taken
    after this is at or after the second of every earlier write.
    """
    written = time.time()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        header = requests.get(f"{base}/metadata", timeout=10).headers["Date"]
        if parsedate_to_datetime(header).timestamp() > written:
            return
        time.sleep(0.1)
    raise AssertionError("the server's Date header does not advance")


@pytest.fixture
def narrow_margin(monkeypatch, server):
    """A 1 s checkpoint margin, after the Date header has passed earlier writes (module doc).

    One second is the least margin that still catches every later write: sekmet
    reads ``gt<whole second>`` as "after that whole second", and the Date header
    is behind the clock.
    """
    monkeypatch.setattr(rest, "CHECKPOINT_MARGIN", timedelta(seconds=1))
    settle(server)


def fhir(method: str, url: str, resource: dict | None = None) -> dict:
    response = requests.request(
        method,
        url,
        json=resource,
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        timeout=30,
    )
    assert response.status_code < 300, f"{method} {url}: {response.status_code} {response.text}"
    return response.json() if response.content else {}


def put(base: str, resource: dict) -> dict:
    return fhir("PUT", f"{base}/{resource['resourceType']}/{resource['id']}", resource)


def read(base: str, kind: str, rid: str) -> dict:
    return fhir("GET", f"{base}/{kind}/{rid}")


def give_record(base: str, patient: str, prefix: str) -> list[str]:
    """Copy p01's lupus record to ``patient``; the references of what was written."""
    written = []
    for kind, rid in P01_RECORD:
        resource = {k: v for k, v in read(base, kind, rid).items() if k != "meta"}
        resource["id"] = f"{prefix}-{rid}"
        resource["subject"] = {"reference": f"Patient/{patient}"}
        put(base, resource)
        written.append(f"{kind}/{resource['id']}")
    return written


def hiv_positive(rid: str, patient: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "56888-1"}],
            "text": "HIV Ag/Ab",
        },
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-06-01",
        "valueCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "10828004"}],
            "text": "Positive",
        },
    }


def set_value(base: str, rid: str, value: float) -> None:
    """A corrected lab value: the Observation PUT back with another valueQuantity.value."""
    observation = {k: v for k, v in read(base, "Observation", rid).items() if k != "meta"}
    observation["valueQuantity"]["value"] = value
    put(base, observation)


def screen(capsys, base: str, state: Path, out: Path, *extra: str) -> tuple[dict, str]:
    """One screen through the command line: candidates.json and the summary's pull line."""
    capsys.readouterr()
    code = main(
        [
            "screen",
            "--server",
            base,
            "--state",
            str(state),
            "--out",
            str(out),
            "--as-of",
            AS_OF,
            *extra,
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    pull = re.search(r"^  pull: (.+)$", printed.out, re.M)
    assert pull, printed.out
    return json.loads((out / "candidates.json").read_text()), pull.group(1)


def comparable(output: dict) -> dict:
    """candidates.json less what differs between runs of the same answer: the diff,
    the review decisions, the generator and the retrieval counts."""
    kept = {k: v for k, v in output.items() if k not in ("changes", "generator", "retrieval")}
    kept["candidates"] = [
        {k: v for k, v in c.items() if k != "review"} for c in output["candidates"]
    ]
    return kept


def any_order(value: object) -> object:
    """``value`` with every ``evidence`` list sorted: the evidence, not its order."""
    if isinstance(value, dict):
        return {
            k: sorted(v, key=json.dumps) if k == "evidence" else any_order(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [any_order(v) for v in value]
    return value


def differences(a: object, b: object, where: str = "") -> list[str]:
    """Where two JSON values differ (candidates matched by patient), for a readable failure."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            line
            for key in sorted(set(a) | set(b), key=str)
            for line in differences(
                a.get(key, "<absent>"), b.get(key, "<absent>"), f"{where}.{key}"
            )
        ]
    if isinstance(a, list) and isinstance(b, list):
        if where.endswith(".candidates"):
            return differences(
                {c["patient"]: c for c in a}, {c["patient"]: c for c in b}, where
            ) or (["order of candidates"] if a != b else [])
        if len(a) == len(b):
            return [
                line
                for i, (x, y) in enumerate(zip(a, b, strict=True))
                for line in differences(x, y, f"{where}[{i}]")
            ]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:400]]


def by_patient(output: dict) -> dict[str, dict]:
    return {c["patient"]: c for c in output["candidates"]}


def change(output: dict, kind: str, patient: str) -> dict:
    found = [c for c in output["changes"][kind] if c["patient"] == patient]
    assert len(found) == 1, (kind, patient, output["changes"][kind])
    return found[0]


# -- 1. what sekmet supports ---------------------------------------------------------
def test_sekmet_lastupdated_meta_and_date(server):
    """The server features the incremental REST pull relies on."""
    condition = {
        "resourceType": "Condition",
        "id": "probe-lastupdated",
        "meta": {"lastUpdated": "2001-01-01T00:00:00Z"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55464009"}]},
        "subject": {"reference": "Patient/p18-hiv-non-lupus"},
    }
    before = requests.get(f"{server}/metadata", timeout=10)
    written = put(server, condition)
    meta = written["meta"]
    # meta.lastUpdated is the server's, in UTC with milliseconds: not the client's.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["lastUpdated"])
    assert meta["lastUpdated"] > "2020" and meta["versionId"]
    # Date: an HTTP date in whole seconds, which rest.checkpoint reads.
    header = before.headers["Date"]
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", header)
    assert rest.checkpoint(header) < meta["lastUpdated"]

    def found(since: str, method: str = "GET") -> list[str]:
        params = {
            "code": "http://snomed.info/sct|55464009",
            "_elements": "subject",
            "_count": "500",
            "_lastUpdated": f"gt{since}",
        }
        if method == "GET":
            response = requests.get(f"{server}/Condition", params=params, timeout=10)
        else:
            response = requests.post(f"{server}/Condition/_search", data=params, timeout=10)
        assert response.status_code == 200, response.text
        return [e["resource"]["id"] for e in response.json().get("entry", [])]

    everything = found("2000-01-01T00:00:00Z")
    assert "probe-lastupdated" in everything and len(everything) > 50
    recent = rest.checkpoint(header)  # the Date less five minutes: the seed is inside too
    assert "probe-lastupdated" in found(recent) and "probe-lastupdated" in found(recent, "POST")
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert found(later) == [] == found(later, "POST")
    bad = requests.get(f"{server}/Condition", params={"_lastUpdated": "gtsoon"}, timeout=10)
    assert bad.status_code == 400
    # DELETE is supported: the resource is gone from reads and searches.
    fhir("DELETE", f"{server}/Condition/probe-lastupdated")
    assert requests.get(f"{server}/Condition/probe-lastupdated", timeout=10).status_code == 410
    assert "probe-lastupdated" not in found("2000-01-01T00:00:00Z")


# -- 2. REST: incremental equals full -----------------------------------------------
def test_rest_incremental_equals_a_full_pull(server, tmp_path, sent, narrow_margin, capsys):
    state = tmp_path / "state"
    first, pull = screen(capsys, server, state, tmp_path / "first")
    assert pull == "full (no earlier complete run to build on)"
    with State(state) as history:
        run = history.runs("misle")[-1]
        pool = history.pool(run.id)
    checkpoint = run.checkpoint
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", checkpoint)
    was = by_patient(first)
    assert was["p01-eligible-baseline"]["status"] == "eligible"
    assert "p19-drug-induced-only" not in was  # not a candidate
    assert was["p68-activity-pyuria-exactly-4"]["status"] == "eligible"
    assert was["p94-belimumab-admin-40d"]["status"] == "washout"
    assert was["p15-synthea-200936003-only"]["status"] == "needs-review"
    assert "p15-synthea-200936003-only" in pool

    # Changes on the server, after the checkpoint:
    # a brand-new patient with a lupus record (joins the pool through changed resources),
    put(server, {"resourceType": "Patient", "id": "inc-new", "birthDate": "1985-04-12"})
    give_record(server, "inc-new", "inc-new")
    # a not-a-candidate gets an SLE code and enough ACR evidence,
    give_record(server, "p19-drug-induced-only", "inc-p19")
    # an eligible candidate gets a positive HIV test (not a candidate-search code),
    put(server, hiv_positive("inc-hiv-p01", "p01-eligible-baseline"))
    # a pool patient's urine WBC is corrected from 10 to 2 /hpf (no pyuria: activity 0),
    set_value(server, "p68-activity-pyuria-exactly-4-6", 2)
    # the belimumab infusion that put a patient in washout is deleted,
    fhir("DELETE", f"{server}/MedicationAdministration/p94-belimumab-admin-40d-7")
    # and the only lupus code of a pool patient is deleted (they leave the pool).
    fhir("DELETE", f"{server}/Condition/p15-synthea-200936003-only-1")

    start = len(sent)
    incremental, pull = screen(capsys, server, state, tmp_path / "incremental")
    assert pull == (
        f"incremental since {checkpoint}: 2 patients with changes, "
        f"{len(pool)} from the previous pool"
    )
    searches = [s for s in sent[start:] if s.kind == "candidates"]
    assert len(searches) >= len(candidate_requests(load_trial("misle").server))
    assert all(s.params.get("_lastUpdated") == f"gt{checkpoint}" for s in searches)
    assert {s.method for s in searches} == {"GET", "POST"}  # long code lists as POST _search

    start = len(sent)
    full, pull = screen(capsys, server, tmp_path / "fresh", tmp_path / "full", "--full")
    assert pull == "full (no earlier complete run to build on)"
    searches = [s for s in sent[start:] if s.kind == "candidates"]
    assert searches and not any("_lastUpdated" in s.params for s in searches)

    # The same answer, patient by patient, funnel and data-quality notes included; only
    # what was read differs: the incremental run fetched the whole previous pool again,
    # p15 (now outside it, with nothing but a Patient left) included.
    patients = full["funnel"]["resources_read"]["Patient"]
    assert differences(comparable(incremental), comparable(full)) == [
        f".funnel.resources_read.Patient: {patients + 1} != {patients}"
    ]
    assert incremental["retrieval"]["patients_fetched"] == full["retrieval"]["patients_fetched"] + 1

    now = by_patient(incremental)
    assert now["inc-new"]["status"] == "eligible"
    assert now["p19-drug-induced-only"]["status"] == "eligible"
    assert now["p01-eligible-baseline"]["status"] == "excluded"
    assert now["p01-eligible-baseline"]["exclusions"]["hiv"]["result"] == "excluded"
    assert now["p68-activity-pyuria-exactly-4"]["status"] == "needs-review"
    assert now["p68-activity-pyuria-exactly-4"]["criteria"]["activity"]["result"] == "not-met"
    assert now["p94-belimumab-admin-40d"]["status"] == "eligible"
    assert now["p94-belimumab-admin-40d"]["eligible_from"] is None
    assert "p15-synthea-200936003-only" not in now

    # The diff against the first run names each change.
    assert incremental["changes"]["previous_run"]["id"] == run.id
    assert {c["patient"] for c in incremental["changes"]["new"]} == {
        "inc-new",
        "p19-drug-induced-only",
    }
    hiv = change(incremental, "dropped", "p01-eligible-baseline")
    assert (hiv["before"], hiv["after"]) == ("eligible", "excluded")
    assert "HIV: excluded" in hiv["why"] and "Observation/inc-hiv-p01" in hiv["why"]
    gone = change(incremental, "dropped", "p15-synthea-200936003-only")
    assert gone["after"] is None and "not in the candidate pool" in gone["why"]
    pyuria = change(incremental, "status_changed", "p68-activity-pyuria-exactly-4")
    assert (pyuria["before"], pyuria["after"]) == ("eligible", "needs-review")
    washout = change(incremental, "status_changed", "p94-belimumab-admin-40d")
    assert (washout["before"], washout["after"]) == ("washout", "eligible")
    assert full["changes"]["previous_run"] is None


# -- 3. Bulk: incremental equals full -----------------------------------------------
def test_bulk_incremental_equals_a_full_export(server, tmp_path, sent, capsys):
    state = tmp_path / "state"
    first, pull = screen(capsys, server, state, tmp_path / "first", "--bulk")
    assert pull == "full (no earlier export in this folder to build on)"
    (folder,) = (state / "bulk").iterdir()
    since = json.loads((folder / ".bulk-state.json").read_text())["baseline"]["transactionTime"]
    was = by_patient(first)
    assert "p21-refuted-sle-code" not in was
    assert was["p02-age-18-birthday-on-d"]["status"] == "eligible"
    assert was["p46-c3-g-per-L-fallback"]["status"] == "eligible"

    written = give_record(server, "p21-refuted-sle-code", "bulk-p21")
    put(server, hiv_positive("bulk-hiv-p02", "p02-age-18-birthday-on-d"))
    set_value(server, "p46-c3-g-per-L-fallback-5", 1.2)  # C3 0.8 -> 1.2 g/L: not low
    changed = len(written) + 2

    start = len(sent)
    incremental, pull = screen(capsys, server, state, tmp_path / "incremental", "--bulk")
    assert pull == f"incremental: resources changed since {since} (Bulk _since)"
    (kickoff,) = [s for s in sent[start:] if s.kind == "bulk-kickoff"]
    assert kickoff.params["_since"] == since  # sekmet's own form: UTC, milliseconds, Z
    manifests = [
        s.response.json()
        for s in sent[start:]
        if s.kind == "bulk-status" and s.response.status_code == 200
    ]
    assert sum(item["count"] for m in manifests for item in m["output"]) == changed

    start = len(sent)
    full, pull = screen(capsys, server, tmp_path / "fresh", tmp_path / "full", "--bulk", "--full")
    assert pull == "full (asked for with --full)"
    (kickoff,) = [s for s in sent[start:] if s.kind == "bulk-kickoff"]
    assert "_since" not in kickoff.params

    # Identical, resources_read and the order of same-day evidence included.
    assert differences(comparable(incremental), comparable(full)) == []
    now = by_patient(incremental)
    assert now["p21-refuted-sle-code"]["status"] == "eligible"
    assert now["p02-age-18-birthday-on-d"]["exclusions"]["hiv"]["result"] == "excluded"
    assert now["p46-c3-g-per-L-fallback"]["status"] == "needs-review"
    assert [c["patient"] for c in incremental["changes"]["new"]] == ["p21-refuted-sle-code"]
    hiv = change(incremental, "dropped", "p02-age-18-birthday-on-d")
    assert hiv["after"] == "excluded" and "HIV: excluded" in hiv["why"]
    c3 = change(incremental, "status_changed", "p46-c3-g-per-L-fallback")
    assert (c3["before"], c3["after"]) == ("eligible", "needs-review")


# -- 4. --publish-group ---------------------------------------------------------------
def listed(output: dict) -> dict[str, str]:
    return {c["patient"]: c["status"] for c in output["candidates"] if c["status"] in LISTED}


def members(group: dict) -> dict[str, str]:
    return {
        m["entity"]["reference"]: next(
            e["valueCode"] for e in m["extension"] if e["url"].endswith("/screen-status")
        )
        for m in group.get("member", [])
    }


def group_ids(base: str) -> list[str]:
    bundle = fhir("GET", f"{base}/Group?_count=500&_elements=id")
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []))


def test_publish_group_puts_one_group_and_updates_it(server, tmp_path, capsys):
    state = tmp_path / "state"
    first, _ = screen(capsys, server, state, tmp_path / "first", "--publish-group")
    group = read(server, "Group", "fhir-cohort-misle")
    assert group["id"] == "fhir-cohort-misle"
    assert group["type"] == "person" and group["actual"] is True
    expected = {f"Patient/{p}": status for p, status in listed(first).items()}
    assert len(expected) > 50 and set(expected.values()) == set(LISTED)
    assert members(group) == expected
    assert group["quantity"] == len(expected)
    written = json.loads((tmp_path / "first" / "group.json").read_text())
    Group.model_validate(written)
    assert {k: v for k, v in group.items() if k != "meta"} == written
    version = int(group["meta"]["versionId"])
    groups = group_ids(server)
    assert groups.count("fhir-cohort-misle") == 1

    put(server, hiv_positive("group-hiv-p05", "p05-age-65-day-before-66th"))
    second, _ = screen(capsys, server, state, tmp_path / "second", "--publish-group")
    updated = read(server, "Group", "fhir-cohort-misle")
    assert int(updated["meta"]["versionId"]) == version + 1
    assert members(updated) == {f"Patient/{p}": s for p, s in listed(second).items()}
    assert "Patient/p05-age-65-day-before-66th" in members(group)
    assert "Patient/p05-age-65-day-before-66th" not in members(updated)
    assert updated["quantity"] == len(expected) - 1
    Group.model_validate(json.loads((tmp_path / "second" / "group.json").read_text()))
    assert group_ids(server) == groups  # updated in place, no second Group


# -- 5. a server refusing _lastUpdated (no server: responses) --------------------------
BASE = "https://fhir.example.test/fhir"


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def refusing_server(rsps, seen: list, status: int) -> None:
    """5 patients; candidate searches find p1 and p2 (by records the fetch brings back
    too), p1 has an SLE code; any search with ``_lastUpdated`` is answered ``status`` with
    an OperationOutcome."""

    def bundle(*resources: dict, total: int | None = None) -> str:
        body: dict = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
        }
        if total is not None:
            body["total"] = total
        return json.dumps(body)

    def answer(request):
        kind = urlsplit(request.url).path[len("/fhir/") :].split("/")[0]
        params = search_params(request)
        seen.append((request.method, kind, params))
        if "_lastUpdated" in params:
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "not-supported",
                        "diagnostics": "Unknown search parameter '_lastUpdated'",
                    }
                ],
            }
            return status, {}, json.dumps(outcome)
        if kind == "Patient" and params.get("_summary") == "count":
            return 200, {}, bundle(total=5)
        if "_elements" in params:  # a candidate search
            return (
                200,
                {},
                bundle(
                    *(
                        {
                            "resourceType": kind,
                            "id": f"{kind}-{p}",
                            "subject": {"reference": f"Patient/{p}"},
                        }
                        for p in ("p1", "p2")
                    )
                ),
            )
        patients = (params.get("_id") or params.get("patient") or "").split(",")
        if kind == "Patient":
            return (
                200,
                {},
                bundle(
                    *(
                        {"resourceType": "Patient", "id": p, "birthDate": "1980-01-01"}
                        for p in patients
                    )
                ),
            )
        found = [
            {
                "resourceType": kind,
                "id": f"{kind}-{p}",
                "subject": {"reference": f"Patient/{p}"},
                **({"status": "final", "code": {"text": "a lab"}} if kind == "Observation" else {}),
            }
            for p in patients
            if p in ("p1", "p2") and kind in ("Condition", "Observation")
        ]
        if kind == "Condition" and "p1" in patients:
            sle = {
                "resourceType": "Condition",
                "id": "sle-p1",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55464009"}]},
                "subject": {"reference": "Patient/p1"},
                "onsetDateTime": "2020-01-01",
            }
            found.append(sle)
        return 200, {}, bundle(*found)

    route_searches(rsps, BASE, answer)


def test_rest_source_falls_back_to_full_searches_on_a_400_to_lastupdated(rsps):
    trial = load_trial("misle")
    seen: list = []
    refusing_server(rsps, seen, 400)
    client = FhirClient(BASE, sleep=lambda s: None)
    source = RestSource(client, trial.server, since="2026-11-20T10:00:00Z", known=("p9",))
    notes: list = []
    raws = list(source.read(notes.append, lambda n: None))

    assert source.pull.startswith("full (the server refused _lastUpdated: HTTP 400")
    assert "Unknown search parameter '_lastUpdated'" in source.pull
    assert [(n.code, n.message) for n in notes] == [("incremental-refused", source.pull)]
    searches = [p for _, _, p in seen if "_elements" in p]
    assert searches[0]["_lastUpdated"] == "gt2026-11-20T10:00:00Z"  # refused, then:
    assert not any("_lastUpdated" in p for p in searches[1:])
    assert len(searches) - 1 == len(candidate_requests(trial.server))
    # a full pull needs no previous pool: p9 is not fetched
    assert source.pool == ["p1", "p2"]
    assert {r.patient for r in raws} == {"p1", "p2"}
    assert source.patients_not_read() == 3


def test_rest_source_raises_a_500_to_lastupdated(rsps):
    seen: list = []
    refusing_server(rsps, seen, 500)
    client = FhirClient(BASE, sleep=lambda s: None)
    source = RestSource(
        client, load_trial("misle").server, since="2026-11-20T10:00:00Z", known=("p1",)
    )
    with pytest.raises(ServerError) as caught:
        list(source.read(lambda n: None, lambda n: None))
    assert caught.value.status == 500 and "HTTP 500" in str(caught.value)
    searches = [p for _, _, p in seen if "_elements" in p]
    assert len(searches) == 1 and "_lastUpdated" in searches[0]  # no full searches after it
    assert not any("patient" in p or "_id" in p for _, _, p in seen)  # nothing fetched


def test_cli_warns_and_notes_a_refused_incremental_pull(rsps, tmp_path, capsys):
    refusing_server(rsps, [], 400)
    state = tmp_path / "state"
    command = ["screen", "--server", BASE, "--state", str(state), "--as-of", AS_OF, "--quiet"]
    assert main([*command, "--out", str(tmp_path / "first")]) == 0
    assert main([*command, "--out", str(tmp_path / "second")]) == 0
    err = capsys.readouterr().err
    assert (
        err.count("fhir-cohort: warning: incremental pull not possible, pulled everything: ") == 1
    )
    assert "the server refused _lastUpdated: HTTP 400 from POST /fhir/Condition/_search" in err
    first = json.loads((tmp_path / "first" / "candidates.json").read_text())
    second = json.loads((tmp_path / "second" / "candidates.json").read_text())
    assert [q["code"] for q in second["data_quality"]] == ["incremental-refused"]
    assert first["data_quality"] == []
    assert [c["patient"] for c in second["candidates"]] == ["p1"]
    assert {k: v for k, v in comparable(second).items() if k != "data_quality"} == {
        k: v for k, v in comparable(first).items() if k != "data_quality"
    }


# -- bugs found on the way (fixed) -----------------------------------------------------
def trial_without(folder: Path, valueset: str, code: str) -> str:
    """The bundled trial with one code taken out of one value set (a site's own expansion):
    the same trial id, so the same screen to the state."""
    shutil.copytree(queries_dir(), folder)
    path = folder / "valuesets" / f"{valueset}.json"
    body = json.loads(path.read_text())
    for include in body["compose"]["include"]:
        include["concept"] = [c for c in include.get("concept", []) if c["code"] != code]
    path.write_text(json.dumps(body))
    assert load_trial(str(folder / "misle.yaml")).id == "misle"
    return str(folder / "misle.yaml")


def test_rest_incremental_after_the_candidate_searches_changed_equals_full(
    server, tmp_path, narrow_margin, capsys
):
    # A site's old expansion of sle-diagnosis lacked 200936003 "Lupus erythematosus".
    trial_old = trial_without(tmp_path / "old", "sle-diagnosis", "200936003")
    # A patient whose only lupus code is 200936003, on the server long before.
    put(server, {"resourceType": "Patient", "id": "tc-le-only", "birthDate": "1980-02-02"})
    le = {
        k: v for k, v in read(server, "Condition", "p01-eligible-baseline-1").items() if k != "meta"
    }
    le.update(id="tc-le-only-1", subject={"reference": "Patient/tc-le-only"})
    le["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "200936003"}]}
    put(server, le)
    settle(server)

    state = tmp_path / "state"
    before, _ = screen(capsys, server, state, tmp_path / "before", "--trial", trial_old)
    assert "tc-le-only" not in by_patient(before)
    # The bundled expansion (with 200936003) is swapped in; nothing changes on the server.
    incremental, pull = screen(capsys, server, state, tmp_path / "incremental")
    full, _ = screen(capsys, server, tmp_path / "fresh", tmp_path / "full", "--full")
    assert by_patient(full)["tc-le-only"]["status"] == "needs-review"
    assert pull.startswith("full") or "tc-le-only" in by_patient(incremental)
    assert differences(comparable(incremental), comparable(full)) == []


def test_evidence_order_does_not_depend_on_read_order(tmp_path):
    """Why the Bulk test compares evidence lists as sets: p01 with a second ANA 1:160 of
    the same day, read after the cohort and then before it."""
    ana = json.loads(
        next(
            line
            for line in (bundled_fixtures() / "Observation.000.ndjson").read_text().splitlines()
            if '"id":"p01-eligible-baseline-4"' in line
        )
    )
    ana["id"] = "a-second-ana"
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "Observation.ndjson").write_text(json.dumps(ana) + "\n")
    trial = load_trial("misle")
    after, before = (
        screening_dict(run_screen([FileSource(*paths)], trial, date.fromisoformat(AS_OF)))
        for paths in ((bundled_fixtures(), extra), (extra, bundled_fixtures()))
    )

    def ana_evidence(output: dict) -> list[str]:
        criteria = by_patient(output)["p01-eligible-baseline"]["criteria"]["acr"]["criteria"]
        return [e["resource"] for e in criteria["ana"]["evidence"]]

    both = ["Observation/a-second-ana", "Observation/p01-eligible-baseline-4"]
    assert sorted(ana_evidence(after)) == sorted(ana_evidence(before)) == both
    assert differences(after, before) == []


def test_bulk_type_filter_change_exports_in_full(rsps, tmp_path):
    status = f"{BASE}/bulkstatus/job-1"
    rsps.get(f"{BASE}/$export", status=202, headers={"Content-Location": status})
    rsps.get(
        status,
        json={
            "transactionTime": "2026-11-20T10:00:00.000Z",
            "request": f"{BASE}/$export",
            "requiresAccessToken": False,
            "output": [{"type": "Patient", "url": f"{BASE}/files/patients"}],
            "error": [],
        },
    )
    rsps.get(f"{BASE}/files/patients", body=b'{"resourceType":"Patient","id":"p1"}\n')
    rsps.get(re.compile(re.escape(BASE) + r"/\w+\?_summary=count$"), json={"total": 0})
    rsps.post(re.compile(re.escape(BASE) + r"/\w+/_search$"), json={"total": 0})
    folder = tmp_path / "export"
    old = load_trial(trial_without(tmp_path / "old", "lab-ana", "5048-4"))
    for trial in (old, load_trial("misle")):
        source = BulkSource(
            FhirClient(BASE, sleep=lambda s: None, max_retries=0),
            trial.server,
            folder,
            type_filter=True,
        )
        source.export(lambda n: None, lambda n: None)
        source.settle(complete=True)
    first, second = (
        parse_qs(urlsplit(c.request.url).query) for c in rsps.calls if "$export" in c.request.url
    )
    assert "5048-4" in second["_typeFilter"][0] and "5048-4" not in first["_typeFilter"][0]
    assert "_since" not in second and source.pull.startswith("full")
