"""Probe: what a server can do for a trial's screen, tried before trusting it.

Rule: a check passes only on a right answer, never on an answer alone. Each
check says what was sent, what came back and whether that was right: a search
by a known code must return only that code, paging is tried on a search with
more results than ``_count``, references are tried on records a candidate
search has just found (bare and typed, ``patient`` and ``subject``, several
at once), as are ``_id`` lists, ``_include`` and ``POST _search``. Then it
prints the retrieval plan ``screen`` will follow (the same functions choose
it, :mod:`fhir_cohort.sources.strategy`) and what it cannot do. Exit 0 only
when a screen would be complete; 4 when it would be partial; 3 when the
server fails. Nothing is written to the server and no export is started.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from ..criteria.language import load
from ..errors import Exit
from ..sources import patient_of, reference_to
from ..sources.plan import ServerPlan
from ..sources.rest import MEDICATION_TYPES, Request, candidate_requests, mismatch
from ..sources.strategy import (
    Capabilities,
    Hit,
    RetrievalPlan,
    capabilities,
    confirm_ids,
    confirm_patients,
)
from ..transport.client import FhirClient, ServerError
from ..transport.redact import shown
from .server import server_client, server_plan

SAMPLE = 50  # results asked for by a probe search
CHECK_CODES = 20  # codes a probe search asks for (a GET that fits any URL limit)


@dataclass(frozen=True)
class Finding:
    """One check: what was sent, what came back, whether that was right (None: cannot tell),
    and what the screen does about it."""

    topic: str
    ok: bool | None
    sent: str
    answer: str
    consequence: str = ""
    partial: bool = False  # a screen would be incomplete because of this
    failed: bool = False  # the server failed: a screen would stop (exit 3)

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "??  "}[self.ok]
        sent = f"{self.sent} -> " if self.sent else ""
        tail = f"\n        -> {self.consequence}" if self.consequence else ""
        return f"  [{mark}] {self.topic}: {shown(sent + self.answer, 300)}{tail}"


@dataclass
class _Page:
    resources: list[dict]
    total: int | None
    next_link: bool


def _get(client: FhirClient, resource: str, params: dict[str, str]) -> _Page | str:
    """One page of a GET search, or why there is none."""
    try:
        body = client.json("GET", client.search_url(resource, params), kind="probe")
    except ServerError as error:
        return str(error)
    if body.get("resourceType") != "Bundle":
        return f"not a Bundle ({shown(str(body.get('resourceType')), 40)})"
    entry, link = body.get("entry"), body.get("link")
    entries = entry if isinstance(entry, list) else []
    links = link if isinstance(link, list) else []
    total = body.get("total")
    return _Page(
        [
            e["resource"]
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ],
        total if type(total) is int else None,
        any(isinstance(k, dict) and k.get("relation") == "next" for k in links),
    )


def _short(client: FhirClient, resource: str, params: dict[str, str]) -> str:
    """A request as sent, shortened for a line."""
    return shown(Request(resource, params, "").describe(), 160)


def _capabilities(client: FhirClient, plan: ServerPlan) -> tuple[Capabilities, list[Finding]]:
    try:
        caps = capabilities(client.capabilities())
    except ServerError as error:
        caps = Capabilities(f"unreadable ({error})")
    findings = [
        Finding(
            "CapabilityStatement",
            caps.read,
            "GET metadata",
            caps.statement + (f": {caps.software} FHIR {caps.fhir_version}" if caps.read else ""),
            "" if caps.read else "types and operations are tried instead of read",
        )
    ]
    if caps.read and not caps.fhir_version.startswith("4.0"):
        findings.append(
            Finding(
                "FHIR version",
                False,
                "",
                caps.fhir_version or "not given",
                "fhir-cohort reads FHIR R4 (4.0.x); results may be wrong",
            )
        )
    kinds = dict.fromkeys(s.resource for s in (*plan.candidate_searches, *plan.fetch))
    missing = caps.unavailable(kinds)
    for kind in kinds:
        offered = None if caps.searchable is None or not caps.read else kind not in missing
        findings.append(
            Finding(
                f"{kind} search",
                offered,
                "",
                {True: "search-type declared", False: "not offered", None: "not declared"}[offered],
                "those records cannot be read: every candidate needs review (exit 4)"
                if offered is False
                else "",
                partial=offered is False,
            )
        )
    return caps, findings


def _code_search(client: FhirClient, plan: ServerPlan) -> tuple[list[Finding], list[Hit], bool]:
    """The candidate searches, a few codes at a time, until two patients are found: does a
    search return only the codes it asked for? Then one long list as POST _search. The
    hits found, and whether long lists may go as POST."""
    hits: list[Hit] = []
    findings: list[Finding] = []
    requests = candidate_requests(plan)
    for request in requests:
        codes = request.params.get("code", "").split(",")
        for start in range(0, len(codes), CHECK_CODES):
            params = {"code": ",".join(codes[start : start + CHECK_CODES]), "_count": str(SAMPLE)}
            page = _get(client, request.resource, params)
            sent = _short(client, request.resource, params)
            if isinstance(page, str):
                failed = Finding("search by code", False, sent, page, "a screen fails", failed=True)
                return [failed], [], True
            if not page.resources:
                continue
            asked = Request(request.resource, params, "")
            other = [r for r in page.resources if mismatch(r, asked, None) == "code"]
            hits += [
                Hit(patient, request.resource, str(r.get("id")))
                for r in page.resources
                if r not in other and (patient := patient_of(r, client.base)[0])
            ]
            if not findings:
                findings.append(
                    Finding(
                        "search by code",
                        not other,
                        sent,
                        f"{len(page.resources)} results (total {page.total}), "
                        f"{len(other)} with other codes",
                        "the server ignores code: every answer is checked, others set aside"
                        if other
                        else "",
                    )
                )
            if len({h.patient for h in hits}) >= 2:
                break
        if len({h.patient for h in hits}) >= 2:
            break
    if not findings:
        findings.append(Finding("search by code", None, "", "no candidate found to check on"))
    first = requests[0]
    try:
        client.json(
            "POST",
            f"{first.resource}/_search",
            data={**first.params, "_count": "1"},
            kind="probe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        post_ok, answer = True, "answered"
    except ServerError as error:
        post_ok, answer = False, str(error)
    findings.append(
        Finding(
            "POST _search",
            post_ok,
            f"POST {first.resource}/_search ({len(first.params['code'].split(','))} codes)",
            answer,
            "" if post_ok else "long code lists go as GETs, in chunks that fit a URL",
        )
    )
    return findings, hits, post_ok


def _paging(client: FhirClient, kind: str) -> Finding:
    """Paging, tried on a search with more results than ``_count``."""
    params = {"_count": "2"}
    page = _get(client, kind, params)
    sent = _short(client, kind, params)
    if isinstance(page, str):
        return Finding("paging", False, sent, page, "", partial=True)
    held = len(page.resources)
    if page.total is not None and page.total <= held:
        said = f"all {page.total} results on one page" + (" (_count ignored)" if held > 2 else "")
        return Finding("paging", None if held <= 2 else True, sent, said)
    if page.next_link:
        return Finding("paging", True, sent, f"{held} of {page.total} results and a next link")
    if page.total is None:
        return Finding(
            "paging", None, sent, f"{held} results, no total and no next link", "cannot tell"
        )
    offset = _get(client, kind, {**params, "_offset": "2"})
    ids = {str(r.get("id")) for r in page.resources}
    works = (
        not isinstance(offset, str)
        and bool(offset.resources)
        and not ({str(r.get("id")) for r in offset.resources} & ids)
    )
    return Finding(
        "paging",
        works,
        sent,
        f"{held} of {page.total} results and no next link; _offset "
        + ("brings the next ones" if works else "does not"),
        "_offset is used where a total is larger than the pages"
        if works
        else "searches longer than a page are incomplete: the screen exits 4",
        partial=not works,
    )


def _include(client: FhirClient, plan: ServerPlan) -> Finding:
    """Does ``_include`` bring the Medications a medication record references?"""
    for search in plan.fetch:
        if search.resource not in MEDICATION_TYPES or not search.include:
            continue
        params = {"_include": f"{search.resource}:{search.include}", "_count": str(SAMPLE)}
        page = _get(client, search.resource, params)
        if isinstance(page, str):
            continue
        referenced = {
            reference_to((r.get("medicationReference") or {}).get("reference"), "Medication")[0]
            for r in page.resources
            if r.get("resourceType") == search.resource
            and isinstance(r.get("medicationReference"), dict)
        } - {None}
        if not referenced:
            continue
        included = {
            str(r.get("id")) for r in page.resources if r.get("resourceType") == "Medication"
        }
        ok = referenced <= included
        return Finding(
            "_include",
            ok,
            _short(client, search.resource, params),
            f"{len(referenced)} Medications referenced, {len(referenced & included)} included",
            "" if ok else "Medications the records reference are read by id",
        )
    return Finding("_include", None, "", "no medication record references a Medication to try")


def probe(client: FhirClient, plan: ServerPlan) -> tuple[list[Finding], RetrievalPlan]:
    """Every check, and the retrieval plan a screen would follow."""
    caps, findings = _capabilities(client, plan)
    counted = _get(client, "Patient", {"_summary": "count"})
    findings.append(
        Finding(
            "patient count",
            not isinstance(counted, str) and counted.total is not None,
            "Patient?_summary=count",
            counted if isinstance(counted, str) else f"total {counted.total}",
            "" if not isinstance(counted, str) else "the funnel counts only the patients fetched",
        )
    )
    strategy = RetrievalPlan(
        capabilities=caps.statement,
        everything=caps.everything,
        unavailable=caps.unavailable(s.resource for s in (*plan.candidate_searches, *plan.fetch)),
    )
    if plan.candidate_searches:
        searched, hits, post_ok = _code_search(client, plan)
        findings += searched
        strategy = replace(strategy, post_search=post_ok)
        findings.append(_paging(client, plan.candidate_searches[0].resource))
        strategy = confirm_patients(client, hits, strategy)
        strategy = confirm_ids(client, sorted({h.patient for h in hits}), strategy)
        findings += [Finding(c.name, c.right, c.sent, c.answer) for c in strategy.checks]
        named = [c for c in strategy.checks if c.name.startswith("patients as")]
        if named and strategy.patient_filter and not named[-1].right:
            findings.append(
                Finding(
                    "patients",
                    False,
                    "",
                    "no way of naming patients brought their records back",
                    "every candidate is tried alone and then needs review (exit 4)",
                    partial=True,
                )
            )
    findings.append(_include(client, plan))
    later = {"_lastUpdated": "gt2999-01-01T00:00:00Z", "_count": "1"}
    changed = _get(client, "Patient", later)
    ignored = not isinstance(changed, str) and bool(changed.resources)
    findings.append(
        Finding(
            "_lastUpdated",
            not isinstance(changed, str) and not ignored,
            _short(client, "Patient", later),
            changed
            if isinstance(changed, str)
            else f"{len(changed.resources)} results (none is right)",
            "incremental runs fall back to full pulls"
            if isinstance(changed, str)
            else (
                "ignored: incremental searches bring everything, the older set aside"
                if ignored
                else ""
            ),
        )
    )
    return findings, strategy


def run(args: argparse.Namespace) -> int:
    trial = load(args.trial)
    findings, strategy = probe(server_client(args), server_plan([trial]))
    print(f"fhir-cohort probe of {args.server} for {trial.id}")
    print("\n".join(f.line() for f in findings))
    print("the plan a screen follows:")
    print("\n".join(f"  {line}" for line in strategy.lines()))
    if any(f.failed for f in findings):
        print("the server failed a search a screen needs: a screen would stop (exit 3)")
        return Exit.SERVER
    partial = [f.topic for f in findings if f.partial]
    if partial:
        print(f"a screen would be incomplete ({', '.join(partial)}): it would exit 4")
        return Exit.PARTIAL
    return Exit.OK
