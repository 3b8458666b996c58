"""Issue 9: right on every FHIR server, or visibly incomplete.

Each test runs ``fhir-cohort screen`` against a small real HTTP server on
127.0.0.1 (``hostile_servers.MiniFhir``, a well-behaved server over a few
patients of the bundled cohort) changed in one way that a real server shows:
Medplum's router (typed references only, ``_include`` ignored, no ``next``
links), fhirsnake (every parameter but one ``_id`` ignored, ``POST _search``
refused) and what large EHRs do (searches that require ``patient`` and
``category``, ``Retry-After`` of hours, warnings inside a 200 Bundle, pages of
10). The answer must equal the well-behaved server's patient by patient, or
the run exits 4 with the patients it could not judge needs-review and never
more eligible. Each docstring names the issue's finding it covers and what
the code before issue 9 did.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest
from hostile_servers import P01, P02, Call, MiniFhir, _codes, _owner, bundle, screen, serve

from fhir_cohort.cli import main

P104 = "p104-medication-reference"  # washout: rituximab in a separate Medication resource
PATIENTS = [P01, P02, P104]


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> dict[str, tuple[str, str | None]]:
    """Status and eligible_from of each patient from the well-behaved server."""
    with serve(Honest(PATIENTS)) as server:
        run = screen(tmp_path_factory.mktemp("honest"), server.base)
    assert run.code == 0, run.stderr
    judged = judgements(run)
    assert judged[P104] == ("washout", "2026-10-15") and judged[P01][0] == "eligible"
    return judged


def judgements(run) -> dict[str, tuple[str, str | None]]:
    return {c["patient"]: (c["status"], c["eligible_from"]) for c in run.result()["candidates"]}


def reasons(run, patient: str) -> str:
    candidate = next(c for c in run.result()["candidates"] if c["patient"] == patient)
    return str(candidate)


# -- server behaviours ------------------------------------------------------------
class Honest(MiniFhir):
    """MiniFhir, with a search that names no patient answered as a real server does: every
    match, whole (probe's searches and the paging check send those)."""

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        if "_elements" in params or {"patient", "subject", "_id"} & params.keys():
            return super().search(kind, params)
        found = list(self.medications.values()) if kind == "Medication" else self.of_type(kind)
        if "code" in params:
            found = [r for r in found if _codes(r) & set(params["code"].split(","))]
        return found


class TypedOnly(Honest):
    """Matches ``patient=`` only as ``Patient/<id>`` (Medplum's in-memory router)."""

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        if "patient" in params:
            values = params["patient"].split(",")
            typed = [v[8:] if v.startswith("Patient/") else "\0" for v in values]
            params = {**params, "patient": ",".join(typed)}
        return super().search(kind, params)


class TypedOnlyNoInclude(TypedOnly):
    """...and ignores ``_include`` (Medplum's router)."""

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        return super().search(kind, {k: v for k, v in params.items() if k != "_include"})


class NoMedication(TypedOnlyNoInclude):
    """...and cannot give the Medication at all (not searchable, 404 by id)."""

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        return [] if kind == "Medication" else super().search(kind, params)


class IgnoresParameters(Honest):
    """Every search parameter ignored but a single ``_id``; ``POST _search`` refused (405);
    ``/metadata`` a Bundle; resources readable by id; one page with a total (fhirsnake)."""

    def __call__(self, call: Call) -> None:
        tail = call.path.removeprefix("/fhir/")
        if call.method == "POST":
            call.json({"resourceType": "OperationOutcome", "issue": []}, status=405)
        elif tail == "metadata":
            call.json(bundle([]))
        elif tail.count("/") == 1:
            kind, rid = tail.split("/")
            found = [r for r in self.search(kind, {"_id": rid})]
            if found:
                call.json(found[0])
        elif tail.isalpha():
            single = call.params.get("_id")
            params = {"_id": single} if single else {}
            if single and "," in single:
                call.json(bundle([]))
            elif single:
                call.json(bundle(self.search(tail, params)))
            else:
                everything = self.every(tail)
                call.json(bundle(everything, total=len(everything)))
        else:
            super().__call__(call)

    def every(self, kind: str) -> list[dict]:
        if kind == "Medication":
            return list(self.medications.values())
        return self.of_type(kind)


class Paged(Honest):
    """Pages of ``size`` results with a ``total``; ``next`` links or none; ``_offset``
    honoured or not (Medplum's router: no next link, ``_offset`` honoured)."""

    def __init__(self, patients, size: int, links: bool, offset: bool):
        super().__init__(patients)
        self.size, self.links, self.offset = size, links, offset

    def __call__(self, call: Call) -> None:
        kind = call.path.removeprefix("/fhir/").removesuffix("/_search")
        if not kind.isalpha() or kind == "metadata" or "_summary" in call.params:
            super().__call__(call)
            return
        found = self.search(kind, call.params)
        start = int(call.params.get("_offset", 0)) if self.offset else 0
        page = found[start : start + self.size]
        more = start + self.size < len(found)
        query = urlencode({**call.params, "_offset": start + self.size})
        link = f"{call.server.base}/{kind}?{query}" if self.links and more else None
        call.json(bundle(page, total=len(found), next_url=link))


class RequiresPatientAndCategory(Honest):
    """Observation searches need ``patient`` and ``category`` (400 without), as some large
    EHRs' do."""

    def __call__(self, call: Call) -> None:
        kind = call.path.removeprefix("/fhir/").removesuffix("/_search")
        if kind == "Observation" and not {"patient", "category"} <= call.params.keys():
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "required",
                        "diagnostics": "patient and category are required",
                    }
                ],
            }
            call.json(outcome, status=400)
            return
        super().__call__(call)


class Warns(Honest):
    """Every search answer carries an OperationOutcome warning entry."""

    def __call__(self, call: Call) -> None:
        kind = call.path.removeprefix("/fhir/").removesuffix("/_search")
        if not kind.isalpha() or kind == "metadata" or "_summary" in call.params:
            super().__call__(call)
            return
        body = bundle(self.search(kind, call.params))
        warning = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "warning",
                    "code": "informational",
                    "diagnostics": "results limited to the last 10 years",
                }
            ],
        }
        body["entry"].append({"resource": warning, "search": {"mode": "outcome"}})
        call.json(body)


# -- the tests ----------------------------------------------------------------------
def test_typed_references_only(tmp_path, honest):
    """Finding 1: before, the fetch sent bare ids, found no records, judged every patient
    not-a-candidate and exited 0. Now the known-answer check picks typed references."""
    with serve(TypedOnly(PATIENTS)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 0, run.stderr
    assert judgements(run) == honest
    plan = run.result()["retrieval"]["plan"]
    assert plan["patients"] == "patient=Patient/a,Patient/b"
    assert [c["right"] for c in plan["checks"][:2]] == [False, True]


def test_ignored_include_reads_the_medication_by_id(tmp_path, honest):
    """Finding 2: before, the rituximab in a separate Medication was never read when
    ``_include`` was ignored, and P104 came out eligible. Now it is read by id."""
    with serve(TypedOnlyNoInclude(PATIENTS)) as server:
        run = screen(tmp_path, server.base)
        medication_reads = [p for p in server.paths() if "Medication" in p and "Request" not in p]
    assert run.code == 0, run.stderr
    assert judgements(run) == honest
    assert medication_reads  # asked for by id, since no answer included it
    assert run.result()["retrieval"]["medications_read_by_id"] == 1


def test_a_medication_that_cannot_be_had_puts_its_patient_to_review(tmp_path, honest):
    """Finding 2 (the rule): a drug that cannot be known never clears a washout; only the
    patient who takes it needs review, and the run is partial."""
    with serve(NoMedication(PATIENTS)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 4
    got = judgements(run)
    assert got[P104][0] == "needs-review"
    assert "Medication/" in reasons(run, P104)
    assert {p: got[p] for p in (P01, P02)} == {p: honest[p] for p in (P01, P02)}
    assert run.quality().get("incomplete-patient") == 1


@pytest.mark.parametrize("offset", [True, False])
def test_no_next_links(tmp_path, honest, offset):
    """Finding 3: before, a server that cut pages at 2 results, announced the total and gave
    no next link lost the rest without a word (exit 0). Now ``_offset`` brings the rest, or
    the run says it is incomplete (exit 4, nobody eligible)."""
    with serve(Paged(PATIENTS, 2, links=False, offset=offset)) as server:
        run = screen(tmp_path, server.base)
    if offset:
        assert run.code == 0, run.stderr
        assert judgements(run) == honest
        assert run.result()["retrieval"]["offset_pages"] > 0
    else:
        assert run.code == 4
        assert all(s == "needs-review" for s, _ in judgements(run).values())
        assert run.quality().get("incomplete-search", 0) + run.quality().get(
            "incomplete-patient", 0
        )


def test_parameters_ignored_and_post_refused(tmp_path, honest):
    """Finding 4: before, POST _search answered 405 stopped the run (exit 3), and with GET,
    ``_id=a,b`` found no Patient: 75 of 115 needs-review, exit 0. Now the searches go as GET,
    the answers are checked (other codes and patients set aside), each type is fetched once
    and Patients are read one by one."""
    with serve(IgnoresParameters(PATIENTS)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 0, run.stderr
    assert judgements(run) == honest
    plan = run.result()["retrieval"]["plan"]
    assert plan["post_search"] is False and plan["patients"] == "fetched by type"
    assert plan["several_ids"] is False
    assert plan["capabilities"].startswith("not a CapabilityStatement")


def test_pages_of_ten_with_next_links(tmp_path, honest):
    """A large EHR's pages of 10, next links given: every page is read."""
    with serve(Paged(PATIENTS, 10, links=True, offset=True)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 0, run.stderr
    assert judgements(run) == honest


def test_searches_that_require_patient_and_category(tmp_path):
    """A large EHR refuses Observation searches without patient and category (400): those
    records cannot be had, so nobody is eligible and the run is partial, saying why."""
    with serve(RequiresPatientAndCategory(PATIENTS)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 4
    assert "category are required" in run.quality_text()
    assert not {s for s, _ in judgements(run).values()} & {"eligible", "washout"}


def test_warnings_inside_a_200_bundle_are_noted(tmp_path, honest):
    """An OperationOutcome warning inside a 200 Bundle is noted, never screened."""
    with serve(Warns(PATIENTS)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 0, run.stderr
    assert judgements(run) == honest
    assert "results limited to the last 10 years" in run.quality_text()
    assert run.quality()["server-warning"] > 0


def test_retry_after_of_hours_stops_within_max_wait(tmp_path):
    """A 429 asking to wait 3 hours stops the run at once (exit 3), naming --max-wait."""

    def throttled(call: Call) -> None:
        call.send(429, b"", headers={"Retry-After": "10800"})

    with serve(throttled) as server:
        started = time.monotonic()
        run = screen(tmp_path, server.base, "--max-wait", "30", quiet=False)
    assert run.code == 3
    assert "--max-wait" in run.stderr and "10800" in run.stderr
    assert time.monotonic() - started < 10


# -- probe (finding 9) -------------------------------------------------------------
class Declares(Honest):
    """A server whose /metadata is ``statement``."""

    def __init__(self, patients, statement: object):
        super().__init__(patients)
        self.statement = statement

    def __call__(self, call: Call) -> None:
        if call.path == "/fhir/metadata":
            call.send(body=json.dumps(self.statement).encode())
        else:
            super().__call__(call)


READ_ONLY = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "resource": [
                {
                    "type": kind,
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [{"name": "code"}, {"name": "patient"}],
                }
                for kind in ("Patient", "Condition", "Observation", "Procedure")
            ]
            + [  # search parameters listed, but only read offered
                {
                    "type": kind,
                    "interaction": [{"code": "read"}],
                    "searchParam": [{"name": "patient"}],
                }
                for kind in ("MedicationStatement", "MedicationRequest", "MedicationAdministration")
            ],
        }
    ],
}


def probe(base: str, capsys) -> tuple[int, str]:
    code = main(["probe", "--server", base])
    return code, capsys.readouterr().out


def test_probe_reads_interactions_not_search_parameters(capsys, tmp_path):
    """Finding 9: before, a CapabilityStatement offering only ``read`` on the medication types
    (with search parameters listed) made probe say their search was "declared". Now they are
    "not offered", probe exits 4, and a screen notes them (missing-data: a washout drug could
    be anyone's), puts every candidate to review and exits 4."""
    with serve(Declares(PATIENTS, READ_ONLY)) as server:
        code, printed = probe(server.base, capsys)
        run = screen(tmp_path, server.base)
    assert code == 4
    assert "[FAIL] MedicationRequest search: not offered" in printed
    assert "[ok  ] Condition search: search-type declared" in printed
    assert "a screen would be incomplete" in printed
    assert run.code == 4
    assert run.quality()["missing-data"] == 3  # the three medication types
    assert {s for s, _ in judgements(run).values()} == {"needs-review"}


@pytest.mark.parametrize(
    "statement",
    [
        {"resourceType": "CapabilityStatement", "rest": [{"resource": "x"}], "software": "junk"},
        {"resourceType": "CapabilityStatement", "rest": [7, {"resource": [3, {"type": 5}]}]},
        ["not", "an", "object"],
    ],
)
def test_probe_survives_a_wrong_shape_capability_statement(capsys, statement):
    """Finding 9 (and issue 8): before, a CapabilityStatement of the wrong shape crashed probe
    (exit 1). Now it is one line, and the checks go on."""
    with serve(Declares(PATIENTS, statement)) as server:
        code, printed = probe(server.base, capsys)
    assert code == 0, printed
    assert "CapabilityStatement" in printed.splitlines()[1]
    assert "[ok  ] patients as patient=a,b" in printed


def test_probe_says_not_a_capability_statement_and_code_ignored(capsys):
    """Finding 9: before, probe said "FHIR version: ?" for a /metadata Bundle and "candidate
    search answered, total N" where the code filter had been ignored."""
    with serve(IgnoresParameters(PATIENTS)) as server:
        code, printed = probe(server.base, capsys)
    assert "[FAIL] CapabilityStatement: GET metadata -> not a CapabilityStatement (a Bundle)" in (
        printed
    )
    assert "[FAIL] search by code" in printed and "with other codes" in printed
    assert "[FAIL] POST _search" in printed
    assert "patients named as: fetched by type" in printed
    assert code == 0  # the screen adapts: complete (test_parameters_ignored_and_post_refused)


class UntypedSearches(Honest):
    """Answers a Condition search with a JSON object that names no resourceType."""

    def __call__(self, call: Call) -> None:
        if call.path == "/fhir/Condition":
            call.send(body=b'{"entry": []}')
        else:
            super().__call__(call)


def test_probe_says_a_search_answer_without_a_type_is_not_a_bundle(capsys):
    """Before, probe crashed showing the missing resourceType (exit 1, found by mypy); now
    the check fails with one line, and the other checks go on."""
    with serve(UntypedSearches(PATIENTS)) as server:
        code, printed = probe(server.base, capsys)
    assert "[FAIL] paging: Condition?_count=2 -> not a Bundle (None)" in printed
    assert "[ok  ] patient count: Patient?_summary=count -> total 3" in printed
    assert code == 3  # the server failed a search a screen needs


def test_probe_tests_paging_on_a_search_with_more_results(capsys):
    """Finding 9: before, "[ok] paging" came from a search with no result. Now paging is tried
    where the total is larger than ``_count``; with neither next links nor ``_offset`` a
    screen would be incomplete (exit 4)."""
    with serve(Paged(PATIENTS, 2, links=False, offset=False)) as server:
        code, printed = probe(server.base, capsys)
    assert "[FAIL] paging" in printed and "_offset does not" in printed
    assert code == 4


# -- a patient whose records do not come back ---------------------------------------------
EVERYTHING = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "resource": [
                {
                    "type": kind,
                    "interaction": [{"code": "search-type"}],
                    **({"operation": [{"name": "everything"}]} if kind == "Patient" else {}),
                }
                for kind in (
                    "Patient",
                    "Condition",
                    "Observation",
                    "Procedure",
                    "MedicationStatement",
                    "MedicationRequest",
                    "MedicationAdministration",
                    "Medication",
                )
            ]
        }
    ],
}


class NoPatientSearch(Declares):
    """Searches by patient or subject find nothing, however the patient is named;
    ``Patient/<id>/$everything`` is declared, and answered when ``everything`` is set."""

    def __init__(self, patients, everything: bool):
        super().__init__(patients, EVERYTHING if everything else READ_ONLY_NONE)
        self.everything = everything

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        if {"patient", "subject"} & params.keys():
            return []
        return super().search(kind, params)

    def __call__(self, call: Call) -> None:
        if self.everything and call.path.endswith("/$everything"):
            patient = call.path.split("/")[-2]
            found = [r for r in self.resources if _owner(r) == patient]
            call.json(bundle(found + list(self.medications.values())))
        else:
            super().__call__(call)


READ_ONLY_NONE = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}


def test_patient_everything_is_the_last_try(tmp_path, honest):
    """What to build 1: when no way of naming patients brings their records back,
    ``Patient/<id>/$everything`` (declared) does, and the answer is the files' one."""
    with serve(NoPatientSearch(PATIENTS, everything=True)) as server:
        run = screen(tmp_path, server.base)
        asked = [p for p in server.paths() if p.endswith("/$everything")]
    assert run.code == 0, run.stderr
    assert judgements(run) == honest
    assert len(asked) == len(PATIENTS)


def test_records_that_never_come_back_put_those_patients_to_review(tmp_path):
    """Finding 1 (the rule): candidates found by a code search who come back with none of
    the records that found them are needs-review with the reason, and the run exits 4."""
    with serve(NoPatientSearch(PATIENTS, everything=False)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 4
    assert {s for s, _ in judgements(run).values()} == {"needs-review"}
    assert run.quality()["incomplete-patient"] == len(PATIENTS)
    assert "however it was asked" in reasons(run, P01)


class ShortUrls(Honest):
    """Refuses POST _search (405) and any URL longer than 600 characters (414)."""

    def __call__(self, call: Call) -> None:
        if call.method == "POST":
            call.json({"resourceType": "OperationOutcome", "issue": []}, status=405)
        elif len(call.path) + len(urlencode(call.params, safe="|,:")) > 600:
            call.send(414, b"URI Too Long", content_type="text/plain")
        else:
            super().__call__(call)


def test_shorter_code_chunks_where_urls_are_limited(tmp_path, honest):
    """What to build 2: GET where POST is refused, in chunks short enough for the server's
    URL limit (a 414 halves the code list)."""
    with serve(ShortUrls(PATIENTS), max_requests=2000) as server:
        run = screen(tmp_path, server.base)
        longest = max(len(s.path) for s in server.seen if s.method == "GET")
        refused = sum(1 for s in server.seen if s.method == "GET" and len(s.path) > 600)
    assert run.code == 0, run.stderr
    assert judgements(run) == honest
    assert refused and longest > 600  # tried, refused, then halved


class TypedOnlyUnchanged(TypedOnly):
    """...and nothing changed since any ``_lastUpdated`` asked for."""

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        return [] if "_lastUpdated" in params else super().search(kind, params)


def test_an_incremental_run_with_no_changes_still_names_patients_right(tmp_path, honest):
    """An incremental run whose candidate searches find no change has no candidate's record
    to check how patients are named: it checks on a sample of the server's records, so the
    previous pool is fetched with typed references and judged as before."""
    with serve(TypedOnlyUnchanged(PATIENTS)) as server:
        first = screen(tmp_path, server.base)
        second = screen(tmp_path, server.base)
    assert (first.code, second.code) == (0, 0), second.stderr
    assert judgements(second) == honest
    assert second.result()["retrieval"]["plan"]["patients"] == "patient=Patient/a,Patient/b"
