"""Retrieval strategy: how one server is asked for a trial's records, chosen from what it
declares and confirmed by what it answers.

Rule: servers answer the same request differently (``docs/servers.md``): one
matches only typed references (``patient=Patient/a``), one ignores every search
parameter, one refuses ``POST _search``, one gives no ``next`` link. Nothing is
assumed. The CapabilityStatement says which types can be searched or read and
whether ``Patient/$everything`` exists; cheap *known-answer* requests, built from
records a candidate search has just found, confirm how patients must be named
(bare or typed, ``patient`` or ``subject``, several per request or one) and
whether several ids go in one ``_id``. Every check records what was sent, what
came back and whether that was right, so ``probe`` can show it and
``candidates.json`` can keep it (``retrieval.plan``).

A check that cannot be made leaves the safe default, and the per-patient checks
of the fetch (:mod:`.rest`) still catch what a plan gets wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ..transport.client import FhirClient, ServerError
from . import patient_of

PROBE_PAGE = 50  # results asked for by a known-answer request


@dataclass(frozen=True, slots=True)
class Check:
    """One known-answer request: what was sent, what came back, whether that was right
    (None: the answer could not tell)."""

    name: str
    sent: str
    answer: str
    right: bool | None

    def to_dict(self) -> dict:
        return {"check": self.name, "sent": self.sent, "answer": self.answer, "right": self.right}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a server's CapabilityStatement declares (None: it did not say)."""

    statement: str  # "CapabilityStatement", or why there is none
    software: str = ""
    fhir_version: str = ""
    searchable: frozenset[str] | None = None  # types with the search-type interaction
    everything: bool = False  # Patient/$everything declared

    @property
    def read(self) -> bool:
        return self.statement == "CapabilityStatement"

    def unavailable(self, kinds: Iterable[str]) -> tuple[str, ...]:
        """The types of ``kinds`` this server declares it cannot search.

        >>> Capabilities("CapabilityStatement", searchable=frozenset({"A"})).unavailable("AB")
        ('B',)
        """
        if self.searchable is None or not self.read:
            return ()
        return tuple(k for k in dict.fromkeys(kinds) if k not in self.searchable)


def _dicts(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def capabilities(body: object) -> Capabilities:
    """Read a ``/metadata`` answer, whatever its shape.

    >>> capabilities({"resourceType": "Bundle"}).statement
    'not a CapabilityStatement (a Bundle)'
    >>> c = capabilities({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
    ...     "rest": [{"resource": [{"type": "Patient", "interaction": [{"code": "read"}],
    ...     "operation": [{"name": "everything"}]}, {"type": "Condition",
    ...     "interaction": [{"code": "search-type"}]}, "junk"]}]})
    >>> sorted(c.searchable), c.everything, c.fhir_version
    (['Condition'], True, '4.0.1')
    >>> capabilities({"resourceType": "CapabilityStatement", "rest": "x"}).searchable is None
    True
    """
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        kind = body.get("resourceType") if isinstance(body, dict) else None
        named = f"a {kind}" if isinstance(kind, str) else "no FHIR resource"
        return Capabilities(f"not a CapabilityStatement ({named[:60]})")
    software = body.get("software")
    software = software if isinstance(software, dict) else {}
    name = " ".join(str(software.get(k, "")) for k in ("name", "version")).strip()
    resources = [r for rest in _dicts(body.get("rest")) for r in _dicts(rest.get("resource"))]
    declared = any(_dicts(r.get("interaction")) for r in resources)
    searchable = frozenset(
        str(r.get("type"))
        for r in resources
        if any(i.get("code") == "search-type" for i in _dicts(r.get("interaction")))
    )
    everything = any(
        str(o.get("name", "")).lstrip("$") == "everything"
        for r in resources
        if r.get("type") == "Patient"
        for o in _dicts(r.get("operation"))
    )
    version = body.get("fhirVersion")
    return Capabilities(
        "CapabilityStatement",
        name[:80],
        version if isinstance(version, str) else "",
        searchable if declared else None,  # declaring no interaction at all says nothing
        everything,
    )


@dataclass(frozen=True, slots=True)
class PatientForm:
    """How a search names its patients: the parameter, bare or typed ids, several or one."""

    param: str = "patient"
    typed: bool = False
    several: bool = True

    def value(self, patients: Sequence[str]) -> str:
        """The parameter's value for these patients.

        >>> PatientForm("subject", True).value(["a", "b"])
        'Patient/a,Patient/b'
        """
        return ",".join(f"Patient/{p}" if self.typed else p for p in patients)

    def describe(self) -> str:
        """The form, in words.

        >>> PatientForm().describe(), PatientForm("subject", True, False).describe()
        ('patient=a,b', 'subject=Patient/a (one patient a request)')
        """
        if self.several:
            return f"{self.param}={self.value(['a', 'b'])}"
        return f"{self.param}={self.value(['a'])} (one patient a request)"


# Tried in this order; the first whose answer holds the known records (and no one else's) wins.
FORMS = (
    PatientForm("patient", False, True),
    PatientForm("patient", True, True),
    PatientForm("subject", True, True),
    PatientForm("patient", True, False),
    PatientForm("subject", True, False),
    PatientForm("patient", False, False),
)


@dataclass(frozen=True, slots=True)
class Hit:
    """A record a candidate search found: whose, and its type and id (a known answer)."""

    patient: str
    resource: str
    id: str


@dataclass(frozen=True)
class RetrievalPlan:
    """How a screen asks this server for records (the defaults: a server that does all)."""

    post_search: bool = True  # POST Type/_search for long code lists (else GET, shorter)
    form: PatientForm = PatientForm()
    patient_filter: bool = True  # False: patient= is ignored; a type is fetched once, filtered
    several_ids: bool = True  # Patient?_id=a,b (else one read per id)
    everything: bool = False  # Patient/{id}/$everything, the last try for a patient
    unavailable: tuple[str, ...] = ()  # fetched types the server does not offer
    capabilities: str = "not read"
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def patients(self) -> str:
        """How patients are named in the fetch."""
        return self.form.describe() if self.patient_filter else "fetched by type"

    def lines(self) -> list[str]:
        """The plan in words, for ``--dry-run`` and ``probe``."""
        lines = [
            f"CapabilityStatement: {self.capabilities}",
            "long code lists: "
            + ("POST Type/_search" if self.post_search else "GET, in chunks that fit a URL"),
            f"patients named as: {self.patients}"
            + (
                ""
                if self.patient_filter
                else " (the server ignores the patient parameter: each "
                "type once, kept for the candidates)"
            ),
            "Patients and Medications by id: "
            + ("_id=a,b" if self.several_ids else "one read per id (Type/id)"),
            "Medications the records reference and the answer lacks: read by id",
            "paging: next links; _offset where a total is larger than the pages hold",
            "a candidate whose records do not come back: tried alone with each form"
            + (", then Patient/$everything" if self.everything else "")
            + ", then needs-review",
        ]
        if self.unavailable:
            lines.append(
                f"cannot do: {', '.join(self.unavailable)} (not offered): every candidate "
                "needs review, exit 4"
            )
        return lines

    def to_dict(self) -> dict:
        return {
            "capabilities": self.capabilities,
            "post_search": self.post_search,
            "patients": self.patients,
            "several_ids": self.several_ids,
            "everything": self.everything,
            "unavailable": list(self.unavailable),
            "checks": [c.to_dict() for c in self.checks],
        }


def read_capabilities(client: FhirClient) -> Capabilities:
    """The server's CapabilityStatement, read; a failure is a finding, not an error."""
    try:
        return capabilities(client.capabilities())
    except ServerError as error:
        return Capabilities(f"unreadable ({error})")


def _first_page(
    client: FhirClient, resource: str, params: dict[str, str]
) -> tuple[list[dict], int | None] | str:
    """The resources of a search's first page and its ``total``, or why there are none."""
    try:
        body = client.json("GET", client.search_url(resource, params), kind="check")
    except ServerError as error:
        return f"refused: {error}"
    if body.get("resourceType") != "Bundle" or not isinstance(body.get("entry", []), list):
        return "not a Bundle"
    total = body.get("total")
    found = [e["resource"] for e in body.get("entry", []) if isinstance(e, dict) and _is_res(e)]
    return found, total if type(total) is int else None


def _is_res(entry: dict) -> bool:
    """Is this entry a match (not an included resource, not an OperationOutcome)?

    >>> _is_res({"resource": {"resourceType": "OperationOutcome"}}), _is_res({"resource": 1})
    (False, False)
    """
    resource, search = entry.get("resource"), entry.get("search")
    mode = search.get("mode") if isinstance(search, dict) else None
    return (
        isinstance(resource, dict)
        and resource.get("resourceType") != "OperationOutcome"
        and mode not in ("include", "outcome")
    )


def _everything(client: FhirClient, resource: str, total: int | None) -> bool:
    """Does an answer's ``total`` equal the number of all resources of the type (the
    parameter was ignored, not an intruder slipped in)?"""
    counted = _first_page(client, resource, {"_summary": "count"})
    return total is not None and not isinstance(counted, str) and counted[1] == total


def _judge(
    answer: tuple[list[dict], int | None] | str, asked: set[str], known: set[str], base: str
) -> tuple[str, bool, bool]:
    """What an answer held, in words; did it hold every known record of the asked
    patients; and did it hold other patients' records too?"""
    if isinstance(answer, str):
        return answer, False, False
    found, _ = answer
    whose = {patient_of(r, base)[0] for r in found}
    got = len(known & {str(r.get("id")) for r in found})
    others = bool(whose - asked - {None})
    said = f"{len(found)} records, {got} of {len(known)} known" + (
        ", some of other patients" if others else ""
    )
    return said, got == len(known), others


def confirm_patients(client: FhirClient, hits: Sequence[Hit], plan: RetrievalPlan) -> RetrievalPlan:
    """Try each way of naming patients on the known records of (up to) two candidates."""
    by_patient: dict[str, list[Hit]] = {}
    for hit in hits:
        by_patient.setdefault(hit.patient, []).append(hit)
    first = next(iter(by_patient.values()), [])
    if not first:
        return replace(plan, checks=(*plan.checks, Check("patients", "", "no known record", None)))
    kind = first[0].resource
    patients = [p for p, h in by_patient.items() if any(x.resource == kind for x in h)][:2]
    checks = list(plan.checks)
    for form in FORMS:
        asked = patients if form.several else patients[:1]
        known = {h.id for p in asked for h in by_patient[p] if h.resource == kind}
        params = {form.param: form.value(asked), "_count": str(PROBE_PAGE)}
        answer = _first_page(client, kind, params)
        said, complete, others = _judge(answer, set(asked), known, client.base)
        sent = client.search_url(kind, params).removeprefix(client.base).lstrip("/")
        name = f"patients as {form.describe()}"
        if others and not isinstance(answer, str) and _everything(client, kind, answer[1]):
            said += f": as many as {kind}?_summary=count, the parameter is ignored"
            checks.append(Check(name, sent, said, False))
            return replace(plan, patient_filter=False, checks=tuple(checks))
        checks.append(Check(name, sent, said, complete))  # others' records are set aside
        if complete:
            return replace(plan, form=form, checks=tuple(checks))
    return replace(plan, form=FORMS[-1], checks=tuple(checks))


def sample_hits(client: FhirClient, kinds: Iterable[str]) -> list[Hit]:
    """Known answers when no candidate search found any (an incremental run with no
    change): the first records of each type that name a patient of this server."""
    hits = []
    for kind in dict.fromkeys(kinds):
        answer = _first_page(client, kind, {"_count": str(PROBE_PAGE)})
        for resource in answer[0] if not isinstance(answer, str) else ():
            patient, _ = patient_of(resource, client.base)
            if patient and resource.get("resourceType") == kind and resource.get("id"):
                hits.append(Hit(patient, kind, str(resource["id"])))
    return hits


def confirm_ids(client: FhirClient, patients: Sequence[str], plan: RetrievalPlan) -> RetrievalPlan:
    """Does ``Patient?_id=a,b`` bring exactly those two?"""
    if len(patients) < 2:
        return plan
    asked = list(patients[:2])
    params = {"_id": ",".join(asked)}
    found = _first_page(client, "Patient", params)
    ids = sorted(str(r.get("id")) for r in found[0]) if not isinstance(found, str) else []
    right = ids == sorted(asked)
    answer = found if isinstance(found, str) else f"Patients {', '.join(ids[:5]) or 'none'}"
    check = Check("several ids", f"Patient?_id={params['_id']}", answer, right)
    return replace(plan, several_ids=right, checks=(*plan.checks, check))
