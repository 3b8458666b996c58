"""What each real FHIR server does with the requests fhir-cohort relies on.

Each server (sekmet-fhir, Medplum's router, fhirsnake; ``real_servers.py``)
is started empty and given a small synthetic data set of its own (three
patients, four Conditions, one medication record of each kind referencing a
Medication, a Procedure, a Group) through ``fhir-cohort seed --source``.
Then the requests the tool sends (searches by ``patient``, ``subject`` and
``_id`` lists, ``_include``, ``_count`` paging, ``POST _search``,
``_lastUpdated``, code lists, ``_elements``, ``_summary=count``, ``$export``
at three levels, a transaction) are sent as the tool sends them, and the
answer is reduced to a short label: for a search, ``filters`` (exactly the
resources that match), ``nothing``, ``everything`` (every resource of the
type: the parameter is ignored) or ``HTTP <status>``.

``EXPECTED`` holds the labels observed with sekmet-fhir 0.1.1,
@medplum/fhir-router 4.5.2 and fhirsnake 1.1.0, so an upgrade that changes
an answer fails here; ``docs/servers.md`` shows the same table (a test keeps
the two in step). Every loop over pages or export polls is bounded in count
and time. Tests that write touch only types no other test here reads
(Procedure, Organization).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import pytest
import requests
from real_servers import ROOT, RealServer

from fhir_cohort.cli import main

SERVER_NAMES = ("sekmet", "medplum", "fhirsnake")
FHIR_JSON = "application/fhir+json"
MAX_PAGES = 20
MAX_SECONDS = 20.0
STAMP = "2020-01-01T00:00:00Z"  # every resource is sent with this meta.lastUpdated
SNOMED = "http://snomed.info/sct"
SLE, ARTHRITIS, HYPERTENSION = "55464009", "3723001", "38341003"
RXNORM_RITUXIMAB = {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "121191"}
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
CELL = re.compile(r"(?<!\\)\|")  # a Markdown table's cell border (an escaped \| is text)


# -- the data set ------------------------------------------------------------------
def _resource(kind: str, rid: str, **fields) -> dict:
    return {"resourceType": kind, "id": rid, "meta": {"lastUpdated": STAMP}, **fields}


def _condition(rid: str, patient: str, code: str) -> dict:
    coding = {"system": SNOMED, "code": code}
    return _resource(
        "Condition", rid, code={"coding": [coding]}, subject={"reference": f"Patient/{patient}"}
    )


def _medication_record(kind: str, rid: str) -> dict:
    fields = {
        "MedicationRequest": {"status": "active", "intent": "order", "authoredOn": "2026-01-10"},
        "MedicationStatement": {"status": "active", "effectiveDateTime": "2026-01-10"},
        "MedicationAdministration": {"status": "completed", "effectiveDateTime": "2026-01-10"},
    }[kind]
    return _resource(
        kind,
        rid,
        medicationReference={"reference": "Medication/char-rituximab"},
        subject={"reference": "Patient/char-a"},
        **fields,
    )


DATASET = [
    *(_resource("Patient", f"char-{x}", birthDate="1980-01-01") for x in "abc"),
    _condition("char-a-sle", "char-a", SLE),
    _condition("char-a-hypertension", "char-a", HYPERTENSION),
    _condition("char-b-sle", "char-b", SLE),
    _condition("char-c-arthritis", "char-c", ARTHRITIS),
    _resource("Medication", "char-rituximab", code={"coding": [RXNORM_RITUXIMAB]}),
    *(_medication_record(kind, f"char-a-{kind.lower()}") for kind in MEDICATION_TYPES),
    _resource(
        "Procedure",
        "char-a-procedure",
        status="completed",
        code={"coding": [{"system": SNOMED, "code": "265764009"}]},
        subject={"reference": "Patient/char-a"},
    ),
    _resource(
        "Group",
        "char-group",
        type="person",
        actual=True,
        member=[
            {"entity": {"reference": "Patient/char-a"}},
            {"entity": {"reference": "Patient/char-b"}},
        ],
    ),
]


def ids(kind: str, where: Callable[[dict], bool] = lambda _: True) -> frozenset[str]:
    """The ids of the data set's resources of a type that satisfy ``where``."""
    return frozenset(r["id"] for r in DATASET if r["resourceType"] == kind and where(r))


def about(*patients: str) -> Callable[[dict], bool]:
    return lambda r: r["subject"]["reference"] in {f"Patient/{p}" for p in patients}


def coded(*codes: str) -> Callable[[dict], bool]:
    return lambda r: r["code"]["coding"][0]["code"] in codes


@pytest.fixture(scope="module")
def server(real_server: RealServer, tmp_path_factory) -> RealServer:
    """Each server with the data set on it, written by ``fhir-cohort seed``."""
    folder = tmp_path_factory.mktemp(f"dataset-{real_server.name}")
    (folder / "dataset.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in DATASET))
    assert main(["seed", "--server", real_server.base, "--yes", "--source", str(folder)]) == 0
    return real_server


# -- asking ------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """A search's answer, all pages (at most MAX_PAGES, MAX_SECONDS) taken together."""

    status: int
    kind: str | None  # the resourceType of the first page's body
    matches: frozenset[str]  # ids of the searched type's entries
    included: frozenset[str]  # Type/id of entries of other types
    first_page: int  # entries on the first page
    total: int | None  # the first page's total
    next_link: bool  # whether the first page links to a next one
    trimmed: bool  # every matching entry lacks fields beyond id, meta and subject


def _body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _next(page: dict) -> str | None:
    return next((x["url"] for x in page.get("link") or () if x.get("relation") == "next"), None)


def ask(base: str, path: str, form: dict[str, str] | None = None) -> Answer:
    """GET ``path`` (or POST ``form`` to it), following next links on the same origin."""
    headers = {"Accept": FHIR_JSON}
    if form is None:
        response = requests.get(f"{base}/{path}", headers=headers, timeout=30)
    else:
        response = requests.post(f"{base}/{path}", data=form, headers=headers, timeout=30)
    page = _body(response)
    first = page
    searched = path.split("?")[0].split("/")[0]
    entries: list[dict] = []
    deadline = time.monotonic() + MAX_SECONDS
    for _ in range(MAX_PAGES):
        entries += [e["resource"] for e in page.get("entry") or () if "resource" in e]
        link = _next(page)
        if not link or urlsplit(link).netloc != urlsplit(base).netloc:
            break
        if time.monotonic() > deadline:
            break
        page = _body(requests.get(link, headers=headers, timeout=30))
    matching = [r for r in entries if r.get("resourceType") == searched]
    return Answer(
        status=response.status_code,
        kind=first.get("resourceType"),
        matches=frozenset(r["id"] for r in matching),
        included=frozenset(
            f"{r['resourceType']}/{r['id']}" for r in entries if r.get("resourceType") != searched
        ),
        first_page=len(first.get("entry") or ()),
        total=first.get("total"),
        next_link=_next(first) is not None,
        trimmed=bool(matching)
        and all(set(r) <= {"resourceType", "id", "meta", "subject"} for r in matching),
    )


def judged(answer: Answer, wanted: frozenset[str], everything: frozenset[str]) -> str:
    """What a search did, in one word.

    >>> a = Answer(200, "Bundle", frozenset("xy"), frozenset(), 2, 2, False, False)
    >>> judged(a, frozenset("x"), frozenset("xy")), judged(a, frozenset("xy"), frozenset("xyz"))
    ('everything', 'filters')
    """
    assert wanted and wanted != everything, "the data set cannot tell filtering from ignoring"
    if answer.status != 200:
        return f"HTTP {answer.status}"
    if answer.matches == wanted:
        return "filters"
    if not answer.matches:
        return "nothing"
    if answer.matches == everything:
        return "everything"
    return f"{len(answer.matches)} of {len(everything)}"


# -- what is observed -----------------------------------------------------------------
def conditions(base: str, query: str, *patients: str) -> str:
    return judged(
        ask(base, f"Condition?{query}"), ids("Condition", about(*patients)), ids("Condition")
    )


def include(base: str, kind: str) -> str:
    answer = ask(base, f"{kind}?patient=Patient/char-a&_include={kind}:medication")
    if answer.status != 200:
        return f"HTTP {answer.status}"
    return "included" if "Medication/char-rituximab" in answer.included else "not included"


def paging(base: str) -> str:
    answer = ask(base, "Condition?_count=2")
    link = "next link" if answer.next_link else "no next link"
    return f"{answer.first_page} entries, total {answer.total}, {link}"


def post_search(base: str) -> str:
    answer = ask(base, "Condition/_search", form={"code": f"{SNOMED}|{SLE}", "_count": "500"})
    return judged(answer, ids("Condition", coded(SLE)), ids("Condition"))


def code_list(base: str) -> str:
    codes = ",".join(f"{SNOMED}|{c}" for c in (SLE, ARTHRITIS))
    answer = ask(base, f"Condition?code={codes}&_count=500")
    return judged(answer, ids("Condition", coded(SLE, ARTHRITIS)), ids("Condition"))


def elements(base: str) -> str:
    answer = ask(base, f"Condition?code={SNOMED}|{SLE}&_elements=subject")
    return "trimmed" if answer.trimmed else "whole resources"


def summary_count(base: str) -> str:
    answer = ask(base, "Patient?_summary=count")
    return f"total {answer.total}, {answer.first_page} entries"


def last_updated(base: str) -> str:
    """Changed since the latest stamp the server holds: only a resource written after it."""
    before = requests.get(f"{base}/Procedure", headers={"Accept": FHIR_JSON}, timeout=30).json()
    latest = max(e["resource"]["meta"]["lastUpdated"] for e in before["entry"])
    time.sleep(0.05)  # past the stamp's millisecond
    written = {  # no meta: the server stamps it, or it has no stamp
        "resourceType": "Procedure",
        "id": "char-b-procedure",
        "status": "completed",
        "subject": {"reference": "Patient/char-b"},
    }
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    requests.put(f"{base}/Procedure/char-b-procedure", json=written, headers=headers, timeout=30)
    answer = ask(base, f"Procedure?_lastUpdated=gt{latest}")
    return judged(answer, frozenset({"char-b-procedure"}), ids("Procedure") | {"char-b-procedure"})


def stamp_on_write(base: str) -> str:
    patient = requests.get(f"{base}/Patient/char-a", headers={"Accept": FHIR_JSON}, timeout=30)
    return "kept as sent" if patient.json()["meta"].get("lastUpdated") == STAMP else "set by server"


def metadata(base: str) -> str:
    return ask(base, "metadata").kind or "not JSON"


def export(base: str, level: str) -> str:
    """Kick off ``$export`` as the tool does, naming a type the server holds none of."""
    headers = {"Prefer": "respond-async", "Accept": FHIR_JSON}
    kick = requests.get(f"{base}/{level}$export?_type=Patient,Device", headers=headers, timeout=30)
    if kick.status_code != 202:
        return f"HTTP {kick.status_code} {_body(kick).get('resourceType') or ''}".strip()
    status_url = kick.headers["Content-Location"]
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        status = requests.get(status_url, headers={"Accept": "application/json"}, timeout=30)
        if status.status_code == 200:
            manifest = status.json()
            files = ", ".join(f"{o['type']} {o.get('count', '?')}" for o in manifest["output"])
            errors = f", {len(manifest['error'])} errors" if manifest.get("error") else ""
            return f"202, exports {files or 'nothing'}{errors}"
        time.sleep(0.2)
    return "202, not finished in 20 s"


def transaction(base: str) -> str:
    """A transaction of one good PUT and one whose id contradicts its URL."""
    good = {"resourceType": "Organization", "id": "char-tx-good", "name": "good"}
    bad = {"resourceType": "Organization", "id": "char-tx-other", "name": "bad"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": good, "request": {"method": "PUT", "url": "Organization/char-tx-good"}},
            {"resource": bad, "request": {"method": "PUT", "url": "Organization/char-tx-bad"}},
        ],
    }
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    answer = requests.post(base, json=bundle, headers=headers, timeout=30)
    read = requests.get(f"{base}/Organization/char-tx-good", headers=headers, timeout=30)
    return f"HTTP {answer.status_code}, good entry {'written' if read.ok else 'not written'}"


OBSERVE: dict[str, Callable[[str], str]] = {
    "GET metadata": metadata,
    "Condition?patient=<id>": lambda b: conditions(b, "patient=char-a", "char-a"),
    "Condition?patient=Patient/<id>": lambda b: conditions(b, "patient=Patient/char-a", "char-a"),
    "Condition?subject=<id>": lambda b: conditions(b, "subject=char-a", "char-a"),
    "Condition?subject=Patient/<id>": lambda b: conditions(b, "subject=Patient/char-a", "char-a"),
    "Condition?patient=<id>,<id>": lambda b: conditions(
        b, "patient=char-a,char-b", "char-a", "char-b"
    ),
    "Condition?patient=Patient/<id>,Patient/<id>": lambda b: conditions(
        b, "patient=Patient/char-a,Patient/char-b", "char-a", "char-b"
    ),
    "Patient?_id=<id>,<id>": lambda b: judged(
        ask(b, "Patient?_id=char-a,char-b"), frozenset({"char-a", "char-b"}), ids("Patient")
    ),
    **{f"{k}?_include={k}:medication": (lambda b, k=k: include(b, k)) for k in MEDICATION_TYPES},
    "Condition?_count=2": paging,
    "POST Condition/_search": post_search,
    "Procedure?_lastUpdated=gt<instant>": last_updated,
    "PUT with meta.lastUpdated": stamp_on_write,
    "Condition?code=<system>|<code>,<system>|<code>": code_list,
    "Condition?code=...&_elements=subject": elements,
    "Patient?_summary=count": summary_count,
    "$export?_type=Patient,Device": lambda b: export(b, ""),
    "Patient/$export?_type=Patient,Device": lambda b: export(b, "Patient/"),
    "Group/<id>/$export?_type=Patient,Device": lambda b: export(b, "Group/char-group/"),
    "transaction, one entry invalid": transaction,
}


def row(sekmet: str, medplum: str, fhirsnake: str) -> dict[str, str]:
    return dict(zip(SERVER_NAMES, (sekmet, medplum, fhirsnake), strict=True))


# What each server answered (sekmet-fhir 0.1.1, @medplum/fhir-router 4.5.2, fhirsnake 1.1.0).
EXPECTED: dict[str, dict[str, str]] = {
    "GET metadata": row("CapabilityStatement", "CapabilityStatement", "Bundle"),
    "Condition?patient=<id>": row("filters", "nothing", "everything"),
    "Condition?patient=Patient/<id>": row("filters", "filters", "everything"),
    "Condition?subject=<id>": row("filters", "nothing", "everything"),
    "Condition?subject=Patient/<id>": row("filters", "filters", "everything"),
    "Condition?patient=<id>,<id>": row("filters", "nothing", "everything"),
    "Condition?patient=Patient/<id>,Patient/<id>": row("filters", "filters", "everything"),
    "Patient?_id=<id>,<id>": row("filters", "filters", "nothing"),
    **{
        f"{k}?_include={k}:medication": row("included", "not included", "not included")
        for k in MEDICATION_TYPES
    },
    "Condition?_count=2": row(
        "2 entries, total 4, next link",
        "2 entries, total 4, no next link",
        "4 entries, total 4, no next link",
    ),
    "POST Condition/_search": row("filters", "filters", "HTTP 405"),
    "Procedure?_lastUpdated=gt<instant>": row("filters", "filters", "everything"),
    "PUT with meta.lastUpdated": row("set by server", "set by server", "kept as sent"),
    "Condition?code=<system>|<code>,<system>|<code>": row("filters", "filters", "everything"),
    "Condition?code=...&_elements=subject": row("trimmed", "whole resources", "whole resources"),
    "Patient?_summary=count": row("total 3, 0 entries", "total 3, 0 entries", "total 3, 3 entries"),
    "$export?_type=Patient,Device": row(
        "202, exports Patient 3", "HTTP 200 Bundle", "HTTP 200 Bundle"
    ),
    "Patient/$export?_type=Patient,Device": row(
        "202, exports Patient 3", "HTTP 404 OperationOutcome", "HTTP 404"
    ),
    "Group/<id>/$export?_type=Patient,Device": row(
        "202, exports Patient 2", "HTTP 404 OperationOutcome", "HTTP 404"
    ),
    "transaction, one entry invalid": row(
        "HTTP 400, good entry not written",
        "HTTP 200, good entry written",
        "HTTP 405, good entry not written",
    ),
}


@pytest.mark.parametrize("behaviour", list(EXPECTED))
def test_server_answers_as_recorded(server: RealServer, behaviour: str):
    assert OBSERVE[behaviour](server.base) == EXPECTED[behaviour][server.name]


def test_docs_table_matches_the_recorded_answers():
    """docs/servers.md shows EXPECTED: one row per behaviour, one column per server."""
    rows = {}
    for line in (ROOT / "docs" / "servers.md").read_text().splitlines():
        cells = [c.strip().replace("\\|", "|") for c in CELL.split(line.strip().strip("|"))]
        if len(cells) == 1 + len(SERVER_NAMES) and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = row(*cells[1:])
    assert rows == EXPECTED
    assert list(OBSERVE) == list(EXPECTED)
