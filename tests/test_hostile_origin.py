"""Hostile servers (issue 8), part 1: where requests go, and whose answers are used.

Each test runs ``fhir-cohort screen`` against a small server of its own on
127.0.0.1 (:mod:`hostile_servers`) with a bearer token, and a second server,
the "other origin", that records every request it receives: no test lets a
credential reach it. The property that makes this hold for any URL is tested
in ``test_hostile_property.py``.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest
from hostile_servers import (
    P01,
    P02,
    MiniFhir,
    assert_no_secrets,
    bundle,
    candidate_search,
    path_ends,
    recorder,
    screen,
    serve,
)

from fhir_cohort.state import State

TOKEN = "hostile-test-T0KEN-9f8e7d"
BEARER = ("--auth", "bearer")
HIV = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "B20"}]}


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("FHIR_COHORT_TOKEN", TOKEN)


@pytest.fixture
def other():
    with serve(recorder) as server:
        yield server


def trick(other, call, path: str) -> str:
    """``http://127.0.0.1:OTHER\\@127.0.0.1:PORT/path``, PORT the server ``call`` came to:
    urlsplit reads PORT, the HTTP library connects to OTHER."""
    return f"http://127.0.0.1:{other.port}\\@127.0.0.1:{call.server.port}{path}"


def hiv_condition(cid: str, reference: str) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": HIV,
        "subject": {"reference": reference},
        "onsetDateTime": "2020-01-01",
    }


def test_an_honest_server_screens_like_the_files(tmp_path):
    """The baseline the hostile variants change one thing of."""
    fhir = MiniFhir([P01, P02])
    with serve(fhir) as server:
        rest = screen(tmp_path / "rest", server.base, *BEARER)
        bulk = screen(tmp_path / "bulk", server.base, *BEARER, "--bulk")
    assert (rest.code, bulk.code) == (0, 0), rest.stderr + bulk.stderr
    assert rest.statuses() == bulk.statuses() == {P01: "eligible", P02: "eligible"}
    assert all(s.headers.get("Authorization") == f"Bearer {TOKEN}" for s in server.seen)


# -- finding 1: a credential reached another server ------------------------------------
def test_backslash_at_next_link_sends_nothing_to_the_other_server(tmp_path, other):
    fhir = MiniFhir([P01])

    def first_page(call):
        link = trick(other, call, "/fhir/Condition?page=2")
        call.json(bundle(fhir.search("Condition", call.params), next_url=link))

    with serve(fhir.but(candidate_search(), first_page)) as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert len(other.seen) == 0
    assert_no_secrets(other, TOKEN)
    assert run.code == 4, run.stderr  # the search was cut short, and says so
    assert run.quality()["incomplete-search"] >= 1
    assert f"127.0.0.1:{other.port}" in run.quality_text()


def test_backslash_at_bulk_file_url_sends_nothing_to_the_other_server(tmp_path, other):
    fhir = MiniFhir([P01])

    def manifest(call):
        listed = fhir.manifest(call.server.base, requires_token=True)
        listed["output"][0]["url"] = trick(other, call, "/fhir/files/Condition")
        call.json(listed)

    with serve(fhir.but(path_ends("/status/1"), manifest)) as server:
        run = screen(tmp_path, server.base, *BEARER, "--bulk")
    assert len(other.seen) == 0
    assert run.code == 3
    assert f"another origin (http://127.0.0.1:{other.port})" in run.stderr
    assert TOKEN not in run.stderr


def test_backslash_at_content_location_sends_nothing_to_the_other_server(tmp_path, other):
    scenario = MiniFhir([P01]).but(
        path_ends("/$export"),
        lambda call: call.send(
            202, headers={"Content-Location": trick(other, call, "/fhir/status/1")}
        ),
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, *BEARER, "--bulk")
        again = screen(tmp_path, server.base, *BEARER, "--bulk")  # nothing kept to resume
    assert len(other.seen) == 0
    assert (run.code, again.code) == (3, 3)
    assert "Content-Location" in run.stderr and "another origin" in run.stderr
    assert server.paths().count("/fhir/$export") == 2


def test_bulk_file_needing_no_token_goes_to_storage_without_credentials(tmp_path, other):
    """A storage host is allowed for files that need no token, without credentials; plain
    http only because the server itself is plain http on the same host (a local server)."""
    fhir = MiniFhir([P01])

    def manifest(call):
        listed = fhir.manifest(call.server.base, requires_token=False)
        listed["output"] = [o for o in listed["output"] if o["type"] != "Condition"]
        listed["output"].append({"type": "Condition", "url": f"{storage.origin}/c.ndjson"})
        call.json(listed)

    def stored(call):
        call.send(body=fhir.ndjson("Condition"), content_type="application/fhir+ndjson")

    with serve(fhir.but(path_ends("/status/1"), manifest)) as server, serve(stored) as storage:
        run = screen(tmp_path, server.base, *BEARER, "--bulk")
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "eligible"}
    assert storage.paths() == ["/c.ndjson"]
    assert_no_secrets(storage, TOKEN)


def test_bulk_file_handed_over_to_storage_leaves_the_token_behind(tmp_path):
    """A file that needs the token is asked of the server with it; the server's redirect
    to storage is followed without it."""
    fhir = MiniFhir([P01])

    def stored(call):
        call.send(body=fhir.ndjson("Condition"), content_type="application/fhir+ndjson")

    scenario = fhir.but(
        path_ends("/files/Condition"), lambda call: call.redirect(f"{storage.origin}/c.ndjson")
    )
    with serve(scenario) as server, serve(stored) as storage:
        run = screen(tmp_path, server.base, *BEARER, "--bulk")
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "eligible"}
    assert storage.paths() == ["/c.ndjson"]
    assert_no_secrets(storage, TOKEN)
    (asked,) = [s for s in server.seen if s.path.endswith("/files/Condition")]
    assert asked.headers["Authorization"] == f"Bearer {TOKEN}"


# -- finding 2: poisoned answers -----------------------------------------------------
def test_redirect_to_another_origin_is_refused_not_used(tmp_path, other):
    """Before: the 302 was followed (without the token) and the other server's empty
    answer used: P01 lost its Conditions and dropped out, exit 0."""
    scenario = MiniFhir([P01, P02]).but(
        lambda call: call.path == "/fhir/Condition" and "patient" in call.params,
        lambda call: call.redirect(f"{other.origin}/fhir/Condition?patient=x"),
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert len(other.seen) == 0
    assert run.code == 3
    assert "redirects elsewhere" in run.stderr
    assert f"http://127.0.0.1:{other.port}" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def relabel(resources: list[dict], old: str, new: str) -> list[dict]:
    """Copies of a patient's resources, as another patient's."""
    text = json.dumps(resources).replace(old, new)
    return json.loads(text)


def test_unrequested_patient_in_a_fetch_answer_is_set_aside(tmp_path):
    """Before: an intruder the server slipped into the answers was listed as eligible."""
    honest = MiniFhir([P01])
    intruder = relabel(copy.deepcopy(honest.resources), P01, "intruder")
    fhir = MiniFhir([P01], extra=intruder)
    with serve(fhir) as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "eligible"}
    assert run.quality()["unrequested-resource"] == len(intruder)
    assert "intruder" in run.quality_text()


def test_unrequested_resource_type_in_a_candidate_search_is_set_aside(tmp_path):
    fhir = MiniFhir([P01])
    stray = {"resourceType": "Patient", "id": "stray", "subject": {"reference": "Patient/x"}}
    scenario = fhir.but(
        candidate_search("Observation"),
        lambda call: call.json(bundle([*fhir.search("Observation", call.params), stray])),
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "eligible"}
    assert run.quality()["unrequested-resource"] == 1


@pytest.mark.parametrize("mode", ["rest", "bulk"])
def test_another_servers_patient_is_never_merged_into_a_local_one(tmp_path, other, mode):
    """An HIV Condition of ``OTHER/fhir/Patient/P01`` is not P01's: it never excludes P01,
    but P01's record may be incomplete, so P01 goes to review (issue 10's rule), not to
    eligible and not to excluded."""
    foreign = hiv_condition("foreign-hiv", f"{other.base}/Patient/{P01}")
    with serve(MiniFhir([P01], extra=[foreign])) as server:
        run = screen(tmp_path, server.base, *BEARER, *(["--bulk"] if mode == "bulk" else []))
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "needs-review"}
    (p01,) = run.result()["candidates"]
    assert p01["exclusions"]["hiv"]["result"] == "clear"
    assert any("foreign-hiv" in reason or "another" in reason for reason in p01["reasons"])
    assert run.quality()["foreign-reference"] == 1
    assert len(other.seen) == 0


@pytest.mark.parametrize("mode", ["rest", "bulk"])
def test_the_servers_own_absolute_reference_is_its_patient(tmp_path, mode):
    """Before (Bulk): ``BASE/Patient/P01`` was read as foreign, so P01's HIV Condition was
    dropped and P01 looked eligible."""
    fhir = MiniFhir([P01])
    with serve(fhir) as server:
        fhir.extra = [hiv_condition("own-hiv", f"{server.base}/Patient/{P01}")]
        run = screen(tmp_path, server.base, *BEARER, *(["--bulk"] if mode == "bulk" else []))
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "excluded"}
    assert "foreign-reference" not in run.quality()


def test_a_date_header_in_the_future_does_not_poison_the_next_incremental_run(tmp_path):
    """Before: a server dated 2099 set the checkpoint to 2099, so the next run asked only
    for changes after 2099 and saw none."""
    with serve(MiniFhir([P01]), date="Thu, 25 Nov 2099 16:00:00 GMT") as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert run.code == 0, run.stderr
    with State(tmp_path / "state") as state:
        recorded = state.previous_run("misle", f"rest:{server.base}")
    assert recorded is not None and recorded.checkpoint is not None
    assert recorded.checkpoint < datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
