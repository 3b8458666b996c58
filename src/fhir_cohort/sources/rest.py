"""REST source: screen a live FHIR server by search, as a funnel, not a dump.

1. **Candidate searches** (the trial's ``server.candidate_searches``) find every
   patient who could be in the candidate pool, by code, in chunks of codes
   (a long list goes as ``POST Type/_search``; where the server refuses that,
   as GETs in chunks short enough for a URL).
2. **Strategy** (:mod:`.strategy`): the CapabilityStatement and a few
   known-answer requests on the records just found choose how patients are
   named (bare or typed, ``patient`` or ``subject``, several or one per
   request, or, on a server that ignores the parameter, each type fetched
   once and kept for the candidates) and whether several ids go in one ``_id``.
3. **Fetch**: those patients' records, several patients per request, only the
   codes the trial reads where the plan says so, with referenced Medications
   ``_include``-d; batches run on a bounded pool of threads. **Every candidate
   must come back with the records that made them one**: a patient whose
   records (or Patient) are missing is tried alone with every other way of
   naming them (and ``Patient/$everything`` where offered); one still missing
   carries a doubt (needs-review, ``incomplete-patient``, exit 4), and so do
   the patients of a batch whose search was cut short.
4. **Medications** the records reference and no answer included are read by
   id, as the Bulk source does; one that cannot be had puts the patients who
   take it to review (their washout is never clear on an unknown drug).

A type of record the trial needs that the server does not offer (its
CapabilityStatement, or a 4xx to its search) could hold anyone's exclusion:
``missing-data``, every candidate needs review, exit 4.

Every other patient on the server is counted (``Patient?_summary=count``) as
read and not a candidate, so the funnel matches a screen of the same data
from files. ``plan`` describes the requests without sending any
(``--dry-run``).

**Answers are checked against the question.** A resource of a type that was
not asked for, of a patient who was not asked for (a Patient with another
id, a Condition of someone else), with a code that was not asked for, or
changed before the ``_lastUpdated`` asked for, is set aside with an
``unrequested-resource`` note saying which parameter the server ignored,
counted per behaviour in the retrieval stats, and never screened; a patient reference to
another server is read with the server's own base, so it stays *foreign*
(noted, attached to nobody). A candidate search hit whose subject names no
readable patient is an ``incomplete-search`` (the pool may miss someone).

**Incremental runs** (``since`` and the previous run's pool): the candidate
searches ask only for resources changed since (``_lastUpdated=gt...``), and
the records fetched are those of the patients found plus every patient of
the previous pool. The result equals a full pull: a patient can only join
the pool through a resource created or changed since, and every pool member's
whole record is fetched again (so a correction or deletion in it is seen).
A server that refuses ``_lastUpdated`` gets the full searches, and the run
says so. ``checkpoint`` is the server's clock at the start of the run, less
a margin, for the next run's ``since``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from ..quality import Note
from ..transport.client import MAX_URL, FhirClient, ServerError
from . import NoteSink, Progress, RawResource, patient_of, patient_reference, reference_to
from .plan import ServerPlan, ServerSearch
from .strategy import (
    FORMS,
    Hit,
    PatientForm,
    RetrievalPlan,
    confirm_ids,
    confirm_patients,
    read_capabilities,
    sample_hits,
)

CODES_PER_REQUEST = 100
PAGE_SIZE = 500
CHECKPOINT_MARGIN = timedelta(minutes=5)  # writes in flight at the start, clock skew
REFUSED = frozenset({400, 404, 405, 422, 501})  # a search the server will not do (401/403: exit 3)
URI_TOO_LONG = 414  # a GET longer than this server takes: the code list is halved
NO_POST = frozenset({404, 405, 501})  # POST _search is not there (a 400 is about parameters)
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")


def checkpoint(server_date: str | None, now: datetime | None = None) -> str:
    """The next run's ``since``: the server's clock (its Date header) less a margin, never
    later than this machine's clock (a Date in the future, by mistake or on purpose, would
    make the next incremental run miss every change until then).

    >>> late = datetime(2026, 11, 26, tzinfo=timezone.utc)
    >>> checkpoint("Wed, 25 Nov 2026 16:00:00 GMT", late)
    '2026-11-25T15:55:00Z'
    >>> checkpoint(None, datetime(2026, 11, 25, 16, 0, tzinfo=timezone.utc))
    '2026-11-25T15:55:00Z'
    >>> checkpoint("Thu, 25 Nov 2099 16:00:00 GMT", late), checkpoint("soon", late)
    ('2026-11-25T23:55:00Z', '2026-11-25T23:55:00Z')
    """
    clock = now or datetime.now(timezone.utc)
    moment = clock
    if server_date:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            told = parsedate_to_datetime(server_date)
            moment = min(clock, told if told.tzinfo else told.replace(tzinfo=timezone.utc))
    moment = moment.astimezone(timezone.utc) - CHECKPOINT_MARGIN
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Request:
    """One planned search: a resource type and its parameters."""

    resource: str
    params: dict[str, str]
    purpose: str

    def describe(self) -> str:
        shown = {
            k: (v if len(v) < 70 else f"{v[:60]}... ({v.count(',') + 1} values)")
            for k, v in self.params.items()
        }
        return f"{self.resource}?" + "&".join(f"{k}={v}" for k, v in shown.items())


def _code_chunks(search: ServerSearch) -> list[str]:
    """``system|code`` lists of a search's value sets, in chunks (sorted: stable plans)."""
    codes = sorted({code for valueset in search.valuesets for code in valueset.codes})
    return [
        ",".join(codes[i : i + CODES_PER_REQUEST]) for i in range(0, len(codes), CODES_PER_REQUEST)
    ]


def candidate_requests(plan: ServerPlan, since: str | None = None) -> list[Request]:
    changed = {"_lastUpdated": f"gt{since}"} if since else {}
    requests = []
    for search in plan.candidate_searches:
        for chunk in _code_chunks(search):
            requests.append(
                Request(
                    search.resource,
                    {"code": chunk, "_elements": "subject", "_count": str(PAGE_SIZE), **changed},
                    "find candidates",
                )
            )
        for valueset in search.valuesets:
            if not valueset.searchable_codes:  # hierarchy filters with no expansion
                for system, prefix in valueset.prefixes:
                    requests.append(
                        Request(
                            search.resource,
                            {
                                "code:below": f"{system}|{prefix}",
                                "_elements": "subject",
                                "_count": str(PAGE_SIZE),
                                **changed,
                            },
                            "find candidates (hierarchy)",
                        )
                    )
    return requests


def _type_requests(search: ServerSearch, named: dict[str, str]) -> list[Request]:
    """The requests of one fetched type for the patients ``named`` (nobody: every one)."""
    base = {**named, "_count": str(PAGE_SIZE)}
    if search.include:
        base["_include"] = f"{search.resource}:{search.include}"
    chunks = _code_chunks(search) if search.valuesets else [""]
    return [
        Request(search.resource, {**base, "code": chunk} if chunk else dict(base), "fetch records")
        for chunk in chunks
    ]


def fetch_requests(
    plan: ServerPlan, patients: list[str], form: PatientForm = FORMS[0]
) -> list[Request]:
    """The searches for these patients' records (their Patient resources aside), their
    patients named as ``form`` says."""
    groups = [patients] if form.several else [[p] for p in patients]
    return [
        request
        for search in plan.fetch
        if search.resource != "Patient"
        for group in groups
        for request in _type_requests(search, {form.param: form.value(group)})
    ]


def halves(request: Request) -> list[Request]:
    """The request with its code list split in two.

    >>> [r.params["code"] for r in halves(Request("Condition", {"code": "a,b,c"}, "find"))]
    ['a', 'b,c']
    """
    values = request.params["code"].split(",")
    half = len(values) // 2
    return [
        replace(request, params={**request.params, "code": ",".join(codes)})
        for codes in (values[:half], values[half:])
    ]


def fitting(request: Request, fits: Callable[[Request], bool]) -> list[Request]:
    """The request, or its code list split in halves until each part ``fits``.

    >>> r = Request("Condition", {"code": "a,b,c"}, "find")
    >>> [x.params["code"] for x in fitting(r, lambda x: len(x.params["code"]) < 4)]
    ['a', 'b,c']
    """
    if fits(request) or "," not in request.params.get("code", ""):
        return [request]
    return [part for half in halves(request) for part in fitting(half, fits)]


def _codes(resource: dict) -> set[str]:
    """The ``system|code`` pairs of a resource's ``code`` (empty when none can be read)."""
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    return {
        f"{c.get('system')}|{c.get('code')}"
        for c in (codings if isinstance(codings, list) else ())
        if isinstance(c, dict)
        and isinstance(c.get("system"), str)
        and isinstance(c.get("code"), str)
    }


def _instant(text: object) -> datetime | None:
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def mismatch(
    resource: dict, request: Request, asked: frozenset[str] | None, base: str | None = None
) -> str | None:
    """The parameter of ``request`` a resource readably does not answer (None: it answers it,
    or cannot be read well enough to tell). ``asked``: the patients asked for (None: anyone).

    >>> ask = Request("Observation", {"patient": "a", "code": "s|1,s|2",
    ...     "_lastUpdated": "gt2026-01-01T00:00:00Z"}, "fetch")
    >>> def obs(patient, code, updated="2026-02-01T00:00:00Z"):
    ...     return {"resourceType": "Observation", "subject": {"reference": f"Patient/{patient}"},
    ...             "code": {"coding": [{"system": "s", "code": code}]},
    ...             "meta": {"lastUpdated": updated}}
    >>> mismatch(obs("a", "1"), ask, frozenset("a")) is None
    True
    >>> mismatch(obs("b", "1"), ask, frozenset("a")), mismatch(obs("a", "9"), ask, frozenset("a"))
    ('patient', 'code')
    >>> mismatch(obs("a", "2", "2025-12-31T00:00:00Z"), ask, None)
    'last-updated'
    >>> mismatch({"resourceType": "Condition"}, ask, None), mismatch({"resourceType": "Observation",
    ...     "subject": {"reference": "Patient/a"}, "code": "?"}, ask, frozenset("a")) is None
    ('type', True)
    """
    patient, foreign = patient_of(resource, base)
    whose_ok = asked is None or foreign is not None or patient in asked
    if resource.get("resourceType") != request.resource:
        included = "_include" in request.params and (patient is None or whose_ok)
        return None if included else "type"
    if not whose_ok:
        return "patient"
    have = _codes(resource)
    wanted = request.params.get("code")
    if have and wanted and not have & set(wanted.split(",")):
        return "code"
    below = request.params.get("code:below")
    if have and below and not any(c.startswith(below) for c in have):
        return "code"
    since = _instant(request.params.get("_lastUpdated", "")[2:])
    meta = resource.get("meta")
    stamp = _instant(meta.get("lastUpdated") if isinstance(meta, dict) else None)
    if since and stamp and stamp <= since:
        return "last-updated"
    return None


IGNORED = {
    "type": "of a type that was not asked for",
    "patient": "of a patient who was not asked for (the server ignored the patient parameter?)",
    "code": "with a code that was not asked for (the server ignored the code parameter?)",
    "last-updated": "changed before the _lastUpdated asked for (the server ignored it?)",
    "id": "with an id that was not asked for (the server ignored _id?)",
}

Records = dict[tuple[str, str], tuple[dict, str]]  # (type, id) -> (resource, type searched)


def _key(resource: dict) -> tuple[str, str]:
    return str(resource.get("resourceType")), str(resource.get("id"))


@contextlib.contextmanager
def _unless_refused() -> Iterator[None]:
    """Go on after a request the server refuses (4xx but 401/403): another way follows."""
    try:
        yield
    except ServerError as error:
        if error.status not in REFUSED:
            raise


@dataclass
class _Fetched:
    """A batch's records, and the patients who may lack some, with why."""

    records: Records = field(default_factory=dict)
    doubts: dict[str, str] = field(default_factory=dict)


class RestSource:
    """Resources of a trial's candidates, searched on a live FHIR server."""

    progress_unit = "patients"

    def __init__(
        self,
        client: FhirClient,
        plan: ServerPlan,
        concurrency: int = 4,
        since: str | None = None,
        known: Sequence[str] = (),
    ):
        self.client = client
        self.plan_ = plan
        self.concurrency = max(1, concurrency)
        self.since = since
        self.known = tuple(known)
        self.checkpoint: str | None = None
        self.pull = "full"  # or how the incremental pull went, in words
        self.strategy = RetrievalPlan()
        self._total: int | None = None
        self._candidates: list[str] = []
        self._hits: dict[str, Records] = {}  # patient -> the records that found them
        self._by_type: dict[str, Records] | None = None  # a server that ignores patient=
        self._set_aside: Counter = Counter()
        self._refused: dict[str, str] = {}  # fetched type -> why the server will not search it
        self._incomplete = 0
        self._read_by_id = 0  # Medications no answer included, read by id
        self._lock = threading.Lock()
        self._medications_seen: set[str] = set()
        self._takers: dict[str, set[tuple[str, str]]] = {}  # Medication id -> (patient, record)

    def searches_fingerprint(self) -> str:
        """A digest of the candidate searches (codes included): an incremental run
        builds on the previous one only if it searched for the same things."""
        text = "\n".join(
            f"{r.resource}?{sorted(r.params.items())}" for r in candidate_requests(self.plan_)
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def pool(self) -> list[str]:
        """The patients whose records were fetched (the next incremental run's pool)."""
        return list(self._candidates)

    def retrieval_plan(self) -> dict:
        """How this server was asked, with the checks that chose it (for candidates.json)."""
        return self.strategy.to_dict()

    # -- the plan ------------------------------------------------------------
    def plan(self) -> list[str]:
        """What a screen would ask of the server, in words (no request is sent)."""
        per = self.plan_.patients_per_request
        lines = [
            f"server {self.client.base}",
            "1. read the CapabilityStatement (metadata) and count the patients: "
            "Patient?_summary=count",
            "2. find candidates"
            + (
                f" changed since {self.since}, plus the {len(self.known)} patients of the "
                "previous pool:"
                if self.since
                else ":"
            ),
        ]
        lines += [f"   {r.describe()}" for r in candidate_requests(self.plan_, self.since)]
        lines.append(
            "3. confirm on two candidates' records how this server names patients "
            "(fhir-cohort probe shows the checks); the default:"
        )
        lines += [f"   {line}" for line in self.strategy.lines()]
        lines.append(
            f"4. for every {per} candidates ({self.strategy.form.describe()}), "
            f"{self.concurrency} batches at a time:"
        )
        lines.append("   Patient?_id=a,b,c")
        lines += [
            f"   {r.describe()}"
            for r in fetch_requests(self.plan_, ["a", "b", "c"], self.strategy.form)
        ]
        return lines

    # -- ResourceSource ------------------------------------------------------
    def total_work(self) -> int | None:
        return None  # known once the candidate searches have run

    def patients_not_read(self) -> int:
        if self._total is None:
            return 0
        return max(0, self._total - len(self._candidates))

    def stats(self) -> dict[str, int]:
        counter = self.client.counter
        found = {
            "http_requests": counter.total,
            "http_retries": counter.retries,
            "patients_fetched": len(self._candidates),
        }
        found.update({f"set_aside_{k}": n for k, n in sorted(self._set_aside.items())})
        if counter.by_kind.get("offset-page"):
            found["offset_pages"] = counter.by_kind["offset-page"]
        if self._incomplete:
            found["patients_incomplete"] = self._incomplete
        if self._read_by_id:
            found["medications_read_by_id"] = self._read_by_id
        return found

    def _count_patients(self) -> int | None:
        try:
            bundle = self.client.json("GET", "Patient?_summary=count", kind="count")
        except ServerError:
            return None
        total = bundle.get("total")
        return total if type(total) is int and total >= 0 else None

    # -- searching, with answers checked -------------------------------------
    def _search(
        self,
        request: Request,
        kind: str,
        asked: frozenset[str] | None,
        incomplete: Callable[[str], None] | None = None,
    ) -> list[dict]:
        """The resources that answer ``request`` (sent as the server takes it); the ones
        that readably do not are set aside and counted."""
        found = []
        for part in self._fitting(request):
            try:
                entries = list(
                    self.client.search(part.resource, part.params, kind=kind, incomplete=incomplete)
                )
            except ServerError as error:
                if error.status == URI_TOO_LONG and "," in part.params.get("code", ""):
                    for half in halves(part):  # a server with a shorter URL limit
                        found += self._search(half, kind, asked, incomplete)
                    continue
                if not self._post_refused(part, error):
                    raise
                found += self._search(part, kind, asked, incomplete)
                continue
            for entry in entries:
                resource = entry["resource"]
                why = mismatch(resource, part, asked, self.client.base)
                if why:
                    self._put_aside(resource, why, f"search {part.resource}")
                    continue
                found.append(resource)
        return found

    def _fitting(self, request: Request) -> list[Request]:
        if self.strategy.post_search:
            return [request]
        return fitting(
            request, lambda r: len(self.client.search_url(r.resource, r.params)) <= MAX_URL
        )

    def _post_refused(self, request: Request, error: ServerError) -> bool:
        """Was this a POST _search the server refused? Then GETs from now on."""
        long = len(self.client.search_url(request.resource, request.params)) > MAX_URL
        if not (long and self.strategy.post_search and error.status in NO_POST):
            return False
        with self._lock:
            self.strategy = replace(self.strategy, post_search=False)
        return True

    def _put_aside(self, resource: dict, why: str, what: str) -> None:
        kind, rid = resource.get("resourceType"), resource.get("id")
        named = f"{kind}/{rid}" if isinstance(kind, str) and isinstance(rid, str) else "a resource"
        with self._lock:
            self._set_aside[why] += 1
        self.client.note(
            "unrequested-resource",
            f"the server answered with {named}, {IGNORED[why]}; set aside, not screened",
            what,
        )

    # -- candidates ----------------------------------------------------------
    def find_candidates(self, note: NoteSink = lambda _: None) -> list[str]:
        """The candidate pool: all of it, or what changed since plus the previous pool."""
        if self.since:
            try:
                changed = self._search_candidates(self.since)
            except ServerError as error:
                if error.status is None or error.status >= 500:
                    raise
                self.pull = f"full (the server refused _lastUpdated: {error})"
                note(Note("incremental-refused", self.pull, self.client.base))
            else:
                self.pull = (
                    f"incremental since {self.since}: {len(changed)} patients with changes, "
                    f"{len(self.known)} from the previous pool"
                )
                return sorted(changed | set(self.known))
        return sorted(self._search_candidates(None))

    def _fetch_codes(self, kind: str) -> frozenset[str] | None:
        """The codes a fetch of ``kind`` asks for (None: every record; empty: not fetched)."""
        searches = [s for s in self.plan_.fetch if s.resource == kind]
        if not searches:
            return frozenset()
        if any(not s.valuesets for s in searches):
            return None
        return frozenset(c for s in searches for chunk in _code_chunks(s) for c in chunk.split(","))

    def _search_candidates(self, since: str | None) -> set[str]:
        """The patients the candidate searches find. A search the server refuses (4xx) is
        missing data, unless it refuses them all: then the server failed."""
        found: set[str] = set()
        refused: list[tuple[str, ServerError]] = []
        answered = 0
        for request in candidate_requests(self.plan_, since):
            if request.resource in self.strategy.unavailable:
                continue
            what = f"search {request.resource}"
            fetched = self._fetch_codes(request.resource)
            codes = set(request.params.get("code", "?").split(","))
            expected = fetched is None or codes <= fetched  # the fetch brings these back
            try:
                resources = self._search(request, "candidates", None)
            except ServerError as error:
                if since or error.status not in REFUSED:
                    raise  # an incremental search refused falls back to the full ones
                refused.append((request.resource, error))
                continue
            answered += 1
            for resource in resources:
                subject = resource.get("subject")
                reference = subject.get("reference") if isinstance(subject, dict) else None
                patient, foreign = patient_reference(reference, self.client.base)
                if patient:
                    found.add(patient)
                    if expected and isinstance(resource.get("id"), str):
                        hits = self._hits.setdefault(patient, {})
                        hits[_key(resource)] = (resource, request.resource)
                elif foreign:
                    self.client.note(
                        "foreign-reference",
                        f"a candidate search found a resource of a patient on another server "
                        f"({foreign}); not a candidate here",
                        what,
                    )
                else:
                    self.client.note(
                        "incomplete-search",
                        "a candidate search found a resource whose subject names no readable "
                        "patient; a candidate may be missing",
                        what,
                    )
        if refused and not answered:
            raise refused[0][1]
        for kind, refusal in refused:
            self._refuse(kind, refusal, "a candidate search")
        return found

    # -- the strategy --------------------------------------------------------
    def _choose_strategy(self, note: NoteSink) -> None:
        """What the CapabilityStatement declares; types it does not offer are missing data."""
        caps = read_capabilities(self.client)
        unavailable = caps.unavailable(
            s.resource for s in (*self.plan_.candidate_searches, *self.plan_.fetch)
        )
        described = caps.statement + (f" ({caps.software})" if caps.software else "")
        self.strategy = replace(
            self.strategy,
            capabilities=described,
            everything=caps.everything,
            unavailable=unavailable,
        )
        for kind in unavailable:
            note(
                Note(
                    "missing-data",
                    f"the server does not offer search on {kind} (its CapabilityStatement): "
                    "those records, which could hold anyone's exclusion, are not read",
                    self.client.base,
                )
            )

    def _confirm(self) -> None:
        """Known-answer checks on the records the candidate searches found."""
        hits = [
            Hit(patient, kind, rid)
            for patient in sorted(self._hits)
            for kind, rid in sorted(self._hits[patient])
        ]
        if len(self._hits) < 2:  # too few found (an incremental run): records of anyone
            kinds = (s.resource for s in self.plan_.candidate_searches)
            hits += sample_hits(self.client, kinds)
        self.strategy = confirm_patients(self.client, hits, self.strategy)
        self.strategy = confirm_ids(self.client, self._candidates, self.strategy)
        if not self.strategy.patient_filter:
            self._by_type = self._fetch_by_type(frozenset(self._candidates))

    def _skipped(self, kind: str) -> bool:
        return kind in self.strategy.unavailable or kind in self._refused

    def _refuse(self, kind: str, error: ServerError, search: str = "the search") -> None:
        """A search the server will not do: missing data for every candidate (a fetched
        type is not asked for again)."""
        with self._lock:
            first = kind not in self._refused
            if search == "the search":
                self._refused[kind] = str(error)
        if first:
            self.client.note(
                "missing-data",
                f"the server refused {search} for {kind} ({error}): those records, which "
                "could make anyone a candidate or hold anyone's exclusion, are not read",
                f"search {kind}",
            )

    def _fetch_by_type(self, pool: frozenset[str]) -> dict[str, Records]:
        """Every record of each fetched type, kept for the pool's patients (a server that
        ignores the patient parameter answers every such search with all of them)."""
        found: dict[str, Records] = {}
        for search in self.plan_.fetch:
            if search.resource == "Patient" or self._skipped(search.resource):
                continue
            for request in _type_requests(search, {}):
                try:
                    resources = self._search(request, "fetch", None)
                except ServerError as error:
                    if error.status not in REFUSED:
                        raise
                    self._refuse(search.resource, error)
                    break
                for resource in resources:
                    patient, _ = patient_of(resource, self.client.base)
                    if patient in pool:
                        found.setdefault(patient, {})[_key(resource)] = (resource, request.resource)
        return found

    # -- fetching ------------------------------------------------------------
    def _ask(self, patients: list[str], form: PatientForm, cut: list[str]) -> Records:
        """These patients' records, asked for with ``form``; cut-short searches to ``cut``."""
        records: Records = {}
        if self._by_type is not None:
            for patient in patients:
                records.update(self._by_type.get(patient, {}))
        requests = fetch_requests(self.plan_, patients, form) if self._by_type is None else []
        asked = frozenset(patients)
        for request in requests:
            if self._skipped(request.resource):
                continue
            try:
                for resource in self._search(request, "fetch", asked, cut.append):
                    records[_key(resource)] = (resource, request.resource)
            except ServerError as error:
                if error.status not in REFUSED:
                    raise
                self._refuse(request.resource, error)
        return records

    def _patients(self, patients: list[str], cut: list[str]) -> Records:
        """Their Patient resources: ``_id=a,b`` where the server takes it, else one read each."""
        records: Records = {}
        if self.strategy.several_ids:
            request = Request("Patient", {"_id": ",".join(patients), "_count": str(PAGE_SIZE)}, "")
            with _unless_refused():  # then one read each
                for resource in self._search(request, "fetch", frozenset(patients), cut.append):
                    records[_key(resource)] = (resource, "Patient")
        for patient in patients:
            if ("Patient", patient) not in records:
                found = self._read("Patient", patient)
                if found is not None:
                    records[_key(found)] = (found, "Patient")
        return records

    def _read(self, kind: str, rid: str) -> dict | None:
        """``GET kind/rid``: the resource, if the server has it and it is that one."""
        try:
            resource = self.client.json("GET", f"{kind}/{rid}", kind="read")
        except ServerError as error:
            if error.status in REFUSED or error.status == 410:
                return None
            raise
        if _key(resource) != (kind, rid):
            self._put_aside(resource, "id", f"read {kind}")
            return None
        return resource

    def _missing(self, patient: str, records: Records) -> set[tuple[str, str]]:
        """The records that made ``patient`` a candidate, and their Patient, not in ``records``."""
        wanted = {k for k in self._hits.get(patient, ()) if not self._skipped(k[0])}
        return (wanted | {("Patient", patient)}) - records.keys()

    def _alone(self, patient: str, records: Records) -> Records:
        """One patient whose records did not all come back, asked for every other way."""
        found: Records = {}
        tries = [f for f in FORMS if not f.several and f != self.strategy.form]
        for form in tries if self._by_type is None else ():
            found.update(self._ask([patient], form, []))
            if not self._missing(patient, {**records, **found}):
                return found
        if self.strategy.everything:
            with _unless_refused():
                for entry in self.client.search(f"Patient/{patient}/$everything", {}, kind="all"):
                    resource = entry["resource"]
                    if patient_of(resource, self.client.base)[0] == patient or (
                        resource.get("resourceType") == "Medication"
                    ):
                        found[_key(resource)] = (resource, "Patient")
        return found

    def _fetch(self, patients: list[str]) -> _Fetched:
        cut: list[str] = []
        batch = _Fetched(self._ask(patients, self.strategy.form, cut))
        batch.records.update(self._patients(patients, cut))
        for patient in patients:
            if self._missing(patient, batch.records):
                batch.records.update(self._alone(patient, batch.records))
            missing = sorted(self._missing(patient, batch.records))
            if missing:  # what the candidate search gave keeps them in the pool, in doubt
                hits = self._hits.get(patient, {})
                batch.records.update({k: hits[k] for k in missing if k in hits})
                named = ", ".join(f"{k}/{i}" for k, i in missing[:3])
                batch.doubts[patient] = (
                    f"the server did not give {named} (found by the candidate search or the "
                    "patient's own resource) however it was asked: this patient's records may "
                    "be incomplete"
                )
            elif cut:
                batch.doubts[patient] = (
                    f"a search for this patient's records was cut short ({cut[0]}): their "
                    "records may be incomplete"
                )
        return batch

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
        self._choose_strategy(note)
        self._total = self._count_patients()
        if self._total is None:
            note(
                Note(
                    "no-patient-count",
                    "the server did not say how many patients it holds; "
                    "the funnel counts only the patients fetched",
                    self.client.base,
                )
            )
        self.checkpoint = checkpoint(self.client.server_date)
        self._candidates = self.find_candidates(note)
        if self._candidates:
            self._confirm()
        per = self.plan_.patients_per_request if self.strategy.form.several else 1
        batches = [self._candidates[i : i + per] for i in range(0, len(self._candidates), per)]
        origin = self.client.base.rstrip("/")
        with ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="fhir-cohort-fetch"
        ) as pool:
            pending: dict[Future, int] = {}
            queue = iter(batches)
            for batch in queue:  # keep at most `concurrency` batches in flight
                pending[pool.submit(self._fetch, batch)] = len(batch)
                if len(pending) >= self.concurrency:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    size = pending.pop(future)
                    fetched = future.result()
                    for resource, searched in fetched.records.values():
                        yield from self._raw(resource, f"{origin}/{searched}")
                    yield from self._doubts(fetched.doubts, f"{origin}/fetch")
                    progress(size)
                    following = next(queue, None)
                    if following is not None:
                        pending[pool.submit(self._fetch, following)] = len(following)
        yield from self._medications(origin)
        for server_note in self.client.notes:
            note(Note(server_note.code, server_note.message, server_note.where))

    def _doubts(self, doubts: dict[str, str], origin: str) -> Iterator[RawResource]:
        """A patient whose records may be incomplete: needs review, and the run is partial."""
        for patient, why in sorted(doubts.items()):
            self._incomplete += 1
            self.client.note("incomplete-patient", f"patient {patient}: {why}", origin)
            yield RawResource({}, origin, patient, unreadable=why)

    def _medications(self, origin: str) -> Iterator[RawResource]:
        """Medications the records reference that no answer included, read by id; the
        patients who take one that cannot be had carry a doubt."""
        wanted = sorted(set(self._takers) - self._medications_seen)
        found: dict[str, dict] = {}
        chunks = [
            wanted[i : i + CODES_PER_REQUEST] for i in range(0, len(wanted), CODES_PER_REQUEST)
        ]
        for chunk in chunks if self.strategy.several_ids else ():
            request = Request("Medication", {"_id": ",".join(chunk), "_count": str(PAGE_SIZE)}, "")
            with _unless_refused():
                for resource in self._search(request, "medications", None):
                    if resource.get("id") in chunk:
                        found[resource["id"]] = resource
                    else:
                        self._put_aside(resource, "id", "search Medication")
        for rid in wanted:
            if rid not in found and (medication := self._read("Medication", rid)) is not None:
                found[rid] = medication
        self._read_by_id = len(found)
        for rid in wanted:
            if rid in found:
                yield from self._raw(found[rid], f"{origin}/Medication")
                continue
            takers = sorted(self._takers[rid])
            yield from self._doubts(
                {
                    patient: f"{record} takes Medication/{rid}, which the server did not give "
                    "(not included, not readable by id): the drug is unknown, so no washout "
                    "it could start can be cleared"
                    for patient, record in takers
                },
                f"{origin}/Medication",
            )

    def _raw(self, resource: dict, origin: str) -> Iterator[RawResource]:
        kind, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(kind, str) or not isinstance(rid, str):
            self.client.note("missing-id", "a resource without a type or id; skipped", origin)
            return
        if kind == "Medication":  # _include brings the same one with every batch
            if rid in self._medications_seen:
                return
            self._medications_seen.add(rid)
        patient, foreign = patient_of(resource, self.client.base)
        if kind in MEDICATION_TYPES and patient:
            target = resource.get("medicationReference")
            reference = target.get("reference") if isinstance(target, dict) else None
            medication, _ = reference_to(reference, "Medication", self.client.base)
            if medication:
                self._takers.setdefault(medication, set()).add((patient, f"{kind}/{rid}"))
        yield RawResource(resource, origin, patient, None, foreign)
