"""``fhir-cohort seed`` reads every entry of a transaction's answer (issue 9, "What to build" 4).

Medplum's router runs a transaction as a batch and answers 200 with an error in
one entry's ``response`` (``docs/servers.md``), which seed used to report as
success (exit 0). Now every resource not confirmed written is named on stderr,
and the command exits 4 when some were written, 3 when none were. Each server
here is a small real HTTP server (``hostile_servers.serve``).
"""

from __future__ import annotations

import json

import pytest
from hostile_servers import Call, serve

from fhir_cohort.cli import main

RESOURCES = [
    {"resourceType": "Patient", "id": "s1", "birthDate": "1980-01-01"},
    {"resourceType": "Patient", "id": "s2", "birthDate": "1981-01-01"},
    {"resourceType": "Patient", "id": "s3", "birthDate": "1982-01-01"},
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "seed.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in RESOURCES))
    return path


def entry(status: str, text: str = "") -> dict:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": text}]}
    return {"response": {"status": status, **({"outcome": outcome} if text else {})}}


def answering(*entries: dict):
    def scenario(call: Call) -> None:
        call.json({"resourceType": "Bundle", "type": "transaction-response", "entry": [*entries]})

    return scenario


def seed(base: str, source, capsys) -> tuple[int, str]:
    code = main(["seed", "--server", base, "--yes", "--source", str(source)])
    return code, capsys.readouterr().err


def test_a_failed_entry_in_a_200_answer_is_named_and_partial(source, capsys):
    """Before: exit 0 and "seeded 3 resources", one of them never written."""
    scenario = answering(entry("201 Created"), entry("400", "invalid birthDate"), entry("200"))
    with serve(scenario) as server:
        code, err = seed(server.base, source, capsys)
    assert code == 4
    assert "seeded 2 of 3 resources" in err
    assert "Patient/s2: 400 invalid birthDate" in err


def test_an_entry_status_that_is_not_text_is_named_not_a_crash(source, capsys):
    """A status sent as a number (FHIR says a string) is not a confirmation: before, seed
    crashed showing it (exit 1, found by mypy); now the entry is named as not written."""
    scenario = answering(entry("201 Created"), {"response": {"status": 201}}, entry("200"))
    with serve(scenario) as server:
        code, err = seed(server.base, source, capsys)
    assert code == 4
    assert "seeded 2 of 3 resources" in err
    assert "Patient/s2: 201" in err


def test_every_entry_failed_is_a_server_failure(source, capsys):
    scenario = answering(*[entry("500", "database down")] * 3)
    with serve(scenario) as server:
        code, err = seed(server.base, source, capsys)
    assert code == 3
    assert err.count("database down") == 3


def test_an_answer_that_confirms_nothing_is_not_success(source, capsys):
    """A 200 whose Bundle lists fewer entries than were sent confirms none of them."""
    with serve(answering(entry("200"))) as server:
        code, err = seed(server.base, source, capsys)
    assert code == 3
    assert "nothing confirmed" in err


def test_single_puts_refused_one_by_one_are_named(source, capsys):
    """A server that refuses transactions (405) gets one PUT each; a 422 to one is named."""

    def scenario(call: Call) -> None:
        if call.method == "POST":
            call.json({"resourceType": "OperationOutcome", "issue": []}, status=405)
        elif call.path.endswith("/s3"):
            outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "no"}]}
            call.json(outcome, status=422)
        else:
            call.json(json.loads(call.body), status=200)

    with serve(scenario) as server:
        code, err = seed(server.base, source, capsys)
        puts = [s.path for s in server.seen if s.method == "PUT"]
    assert code == 4
    assert puts == ["/fhir/Patient/s1", "/fhir/Patient/s2", "/fhir/Patient/s3"]
    assert "Patient/s3: HTTP 422" in err and "seeded 2 of 3" in err
