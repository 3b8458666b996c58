"""REST source: screen a live FHIR server by search, as a funnel, not a dump.

1. **Candidate searches** (the trial's ``server.candidate_searches``) find every
   patient who could be in the candidate pool, by code, in chunks of codes
   (a long list goes as ``POST Type/_search``).
2. **Fetch**: those patients' records, several patients per request
   (``patient=a,b,c``), only the codes the trial reads where the plan says so,
   with referenced Medications ``_include``-d; batches run on a bounded pool
   of threads.

Every other patient on the server is counted (``Patient?_summary=count``) as
read and not a candidate, so the funnel matches a screen of the same data
from files. ``plan`` describes the requests without sending any
(``--dry-run``).

**Answers are checked against the question.** A resource of a type that was
not asked for, or of a patient who was not asked for (a Patient with another
id, a Condition of someone else), is set aside with an
``unrequested-resource`` note and never screened; a patient reference to
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
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from ..quality import Note
from ..transport.client import FhirClient, ServerError
from . import NoteSink, Progress, RawResource, patient_of, patient_reference
from .plan import ServerPlan, ServerSearch

CODES_PER_REQUEST = 100
PAGE_SIZE = 500
CHECKPOINT_MARGIN = timedelta(minutes=5)  # writes in flight at the start, clock skew


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


def fetch_requests(plan: ServerPlan, patients: list[str]) -> list[Request]:
    ids = ",".join(patients)
    requests = []
    for search in plan.fetch:
        key = "_id" if search.resource == "Patient" else "patient"
        base = {key: ids, "_count": str(PAGE_SIZE)}
        if search.include:
            base["_include"] = f"{search.resource}:{search.include}"
        chunks = _code_chunks(search) if search.valuesets else [""]
        for chunk in chunks:
            params = {**base, "code": chunk} if chunk else dict(base)
            requests.append(Request(search.resource, params, "fetch records"))
    return requests


def _requested(resource: dict, patient: str | None, request: Request, asked: frozenset) -> bool:
    """Is this resource an answer to the fetch ``request`` for the patients ``asked``?

    The searched type of one of those patients; or, where the search
    ``_include``-s references, another resource that names no patient (a
    Medication) or one of those patients.

    >>> ask = Request("Condition", {"patient": "a,b", "_count": "500"}, "fetch records")
    >>> c = {"resourceType": "Condition", "id": "1"}
    >>> _requested(c, "a", ask, frozenset("ab")), _requested(c, "z", ask, frozenset("ab"))
    (True, False)
    >>> _requested({"resourceType": "Medication", "id": "m"}, None, ask, frozenset("ab"))
    False
    """
    if resource.get("resourceType") == request.resource:
        return patient in asked
    return "_include" in request.params and (patient is None or patient in asked)


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
        self._total: int | None = None
        self._candidates: list[str] = []
        self._medications_seen: set[str] = set()

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

    # -- the plan ------------------------------------------------------------
    def plan(self) -> list[str]:
        """What a screen would ask of the server, in words (no request is sent)."""
        per = self.plan_.patients_per_request
        lines = [
            f"server {self.client.base}",
            "1. count the patients: Patient?_summary=count",
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
            f"3. for every {per} candidates (patient=a,b,c), {self.concurrency} batches at a time:"
        )
        lines += [f"   {r.describe()}" for r in fetch_requests(self.plan_, ["a", "b", "c"])]
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
        return {
            "http_requests": counter.total,
            "http_retries": counter.retries,
            "patients_fetched": len(self._candidates),
        }

    def _count_patients(self) -> int | None:
        try:
            bundle = self.client.json("GET", "Patient?_summary=count", kind="count")
        except ServerError:
            return None
        total = bundle.get("total")
        return total if type(total) is int and total >= 0 else None

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

    def _search_candidates(self, since: str | None) -> set[str]:
        found: set[str] = set()
        for request in candidate_requests(self.plan_, since):
            what = f"search {request.resource}"
            for entry in self.client.search(request.resource, request.params, kind="candidates"):
                resource = entry["resource"]
                if resource.get("resourceType") != request.resource:
                    self._set_aside(resource, what, None)
                    continue
                subject = resource.get("subject")
                reference = subject.get("reference") if isinstance(subject, dict) else None
                patient, foreign = patient_reference(reference, self.client.base)
                if patient:
                    found.add(patient)
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
        return found

    def _fetch(self, patients: list[str]) -> list[tuple[dict, str]]:
        asked = frozenset(patients)
        entries = []
        for request in fetch_requests(self.plan_, patients):
            for entry in self.client.search(request.resource, request.params, kind="fetch"):
                resource = entry["resource"]
                patient, foreign = patient_of(resource, self.client.base)
                if foreign is None and not _requested(resource, patient, request, asked):
                    self._set_aside(resource, f"search {request.resource}", patient)
                    continue
                entries.append((resource, request.resource))
        return entries

    def _set_aside(self, resource: dict, what: str, patient: str | None) -> None:
        kind, rid = resource.get("resourceType"), resource.get("id")
        named = f"{kind}/{rid}" if isinstance(kind, str) and isinstance(rid, str) else "a resource"
        whose = f" of patient {patient}" if patient else ""
        self.client.note(
            "unrequested-resource",
            f"the server answered with {named}{whose}, which was not asked for; "
            "set aside, not screened",
            what,
        )

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
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
        per = self.plan_.patients_per_request
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
                    for resource, searched in future.result():
                        yield from self._raw(resource, f"{origin}/{searched}")
                    progress(size)
                    following = next(queue, None)
                    if following is not None:
                        pending[pool.submit(self._fetch, following)] = len(following)
        for server_note in self.client.notes:
            note(Note(server_note.code, server_note.message, server_note.where))

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
        yield RawResource(resource, origin, patient, None, foreign)
