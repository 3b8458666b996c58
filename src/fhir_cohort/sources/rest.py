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
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from ..criteria.trial import ServerPlan, ServerSearch, Trial
from ..normalise.facts import Note
from ..server.client import FhirClient, ServerError
from . import NoteSink, Progress, RawResource, patient_id_from_reference, patient_of

CODES_PER_REQUEST = 100
PAGE_SIZE = 500


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


def candidate_requests(plan: ServerPlan) -> list[Request]:
    requests = []
    for search in plan.candidate_searches:
        for chunk in _code_chunks(search):
            requests.append(
                Request(
                    search.resource,
                    {"code": chunk, "_elements": "subject", "_count": str(PAGE_SIZE)},
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


class RestSource:
    """Resources of a trial's candidates, searched on a live FHIR server."""

    progress_unit = "patients"

    def __init__(self, client: FhirClient, trial: Trial, concurrency: int = 4):
        if trial.server is None:
            raise ServerError(f"trial {trial.id!r} has no 'server' section: it says no searches")
        self.client = client
        self.trial = trial
        self.plan_: ServerPlan = trial.server
        self.concurrency = max(1, concurrency)
        self._total: int | None = None
        self._candidates: list[str] = []
        self._medications_seen: set[str] = set()

    # -- the plan ------------------------------------------------------------
    def plan(self) -> list[str]:
        """What a screen would ask of the server, in words (no request is sent)."""
        per = self.plan_.patients_per_request
        lines = [
            f"server {self.client.base}",
            "1. count the patients: Patient?_summary=count",
            "2. find candidates:",
        ]
        lines += [f"   {r.describe()}" for r in candidate_requests(self.plan_)]
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
        return total if isinstance(total, int) else None

    def find_candidates(self) -> list[str]:
        found: set[str] = set()
        for request in candidate_requests(self.plan_):
            for entry in self.client.search(request.resource, request.params, kind="candidates"):
                subject = (entry["resource"].get("subject") or {}).get("reference")
                patient = patient_id_from_reference(subject)
                if patient:
                    found.add(patient)
        return sorted(found)

    def _fetch(self, patients: list[str]) -> list[tuple[dict, str]]:
        entries = []
        for request in fetch_requests(self.plan_, patients):
            for entry in self.client.search(request.resource, request.params, kind="fetch"):
                entries.append((entry["resource"], request.resource))
        return entries

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
        self._candidates = self.find_candidates()
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
            return
        if kind == "Medication":  # _include brings the same one with every batch
            if rid in self._medications_seen:
                return
            self._medications_seen.add(rid)
        yield RawResource(resource, origin, patient_of(resource))
