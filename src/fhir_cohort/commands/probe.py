"""Probe: what a server can do for a trial's screen, tried before trusting it.

Reads the CapabilityStatement, then sends a handful of small read-only
searches (``_count=1``) that the screen will need, and reports each finding
with what the screen will do about it. Nothing is written to the server and
no export is started.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..criteria.language import load
from ..errors import Exit
from ..sources.plan import ServerPlan
from ..sources.rest import candidate_requests
from ..transport.client import FhirClient, ServerError
from .common import server_client
from .screen import server_plan


@dataclass(frozen=True)
class Finding:
    topic: str
    ok: bool | None  # None: could not tell
    detail: str
    consequence: str = ""

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "??  "}[self.ok]
        tail = f"\n        -> {self.consequence}" if self.consequence else ""
        return f"  [{mark}] {self.topic}: {self.detail}{tail}"


def _resource_entry(capabilities: dict, kind: str) -> dict | None:
    for rest in capabilities.get("rest") or ():
        for resource in rest.get("resource") or ():
            if resource.get("type") == kind:
                return resource
    return None


def _try(client: FhirClient, path: str) -> tuple[dict | None, str]:
    try:
        return client.json("GET", path, kind="probe"), ""
    except ServerError as error:
        return None, str(error)


def probe(client: FhirClient, plan: ServerPlan) -> list[Finding]:
    findings: list[Finding] = []
    try:
        capabilities = client.capabilities()
    except ServerError as error:
        return [
            Finding(
                "CapabilityStatement",
                False,
                str(error),
                "the server cannot be screened until /metadata answers",
            )
        ]
    version = str(capabilities.get("fhirVersion", "?"))
    software = capabilities.get("software") or {}
    name = f"{software.get('name', 'unknown software')} {software.get('version', '')}".strip()
    r4 = version.startswith("4.0")
    findings.append(
        Finding(
            "FHIR version",
            r4,
            f"{version} ({name})",
            "" if r4 else "fhir-cohort reads FHIR R4 (4.0.x); results may be wrong",
        )
    )

    types = sorted({s.resource for s in (*plan.candidate_searches, *plan.fetch)})
    for kind in types:
        entry = _resource_entry(capabilities, kind)
        params = {p.get("name") for p in (entry or {}).get("searchParam") or ()}
        wanted = {"code", "patient"} if kind not in ("Patient",) else {"_id"}
        if kind.startswith("Medication") and kind != "Medication":
            wanted = {"patient"}
        missing = sorted(p for p in wanted if p not in params and not p.startswith("_"))
        findings.append(
            Finding(
                f"{kind} search",
                entry is not None and not missing,
                "declared" + (f", missing parameters {', '.join(missing)}" if missing else "")
                if entry
                else "not declared in the CapabilityStatement",
                ""
                if entry and not missing
                else f"searches on {kind} may fail or return everything",
            )
        )

    counted, error = _try(client, "Patient?_summary=count")
    findings.append(
        Finding(
            "patient count",
            counted is not None and isinstance(counted.get("total"), int),
            f"{counted.get('total')} patients" if counted else error,
            "" if counted else "the funnel will count only the patients fetched",
        )
    )

    if plan.candidate_searches:
        request = candidate_requests(plan)[0]
        params = {**request.params, "_count": "1"}
        params.pop("_elements", None)
        query = "&".join(f"{k}={v}" for k, v in params.items())
        page, error = _try(client, f"{request.resource}?{query}")
        findings.append(
            Finding(
                "candidate search by code",
                page is not None,
                f"{request.resource}?code=... ({len(request.params['code'].split(','))} codes) "
                f"answered, total {page.get('total', 'not given')}"
                if page
                else error,
                "" if page else "REST screening will fail; try --bulk",
            )
        )
        if page is not None:
            has_next = any(link.get("relation") == "next" for link in page.get("link") or ())
            findings.append(
                Finding(
                    "paging",
                    has_next or page.get("total", 0) in (0, 1),
                    "next links given" if has_next else "no next link on a one-per-page search",
                    ""
                    if has_next or page.get("total", 0) in (0, 1)
                    else "results beyond the first page would be missed",
                )
            )

    changed, error = _try(client, "Patient?_lastUpdated=gt2000-01-01T00:00:00Z&_count=1")
    findings.append(
        Finding(
            "_lastUpdated",
            changed is not None,
            "searchable" if changed else error,
            "" if changed else "incremental runs will fall back to full pulls",
        )
    )

    operations = {
        o.get("name", "").lstrip("$")
        for rest in capabilities.get("rest") or ()
        for o in (rest.get("operation") or [])
    }
    operations |= {
        o.get("name", "").lstrip("$")
        for rest in capabilities.get("rest") or ()
        for r in rest.get("resource") or ()
        for o in (r.get("operation") or [])
    }
    findings.append(
        Finding(
            "Bulk $export",
            "export" in operations,
            "declared" if "export" in operations else "not declared",
            "--bulk can be used" if "export" in operations else "use REST search (the default)",
        )
    )
    type_filter = "_typeFilter" in str(capabilities)
    findings.append(
        Finding(
            "_typeFilter",
            type_filter or None,
            "declared" if type_filter else "not declared (servers differ; not relied on)",
            "--type-filter narrows Observations in the export"
            if type_filter
            else "Bulk exports download every Observation; fhir-cohort filters them locally",
        )
    )
    return findings


def run(args: argparse.Namespace) -> int:
    trial = load(args.trial)
    findings = probe(server_client(args), server_plan(trial))
    print(f"fhir-cohort probe of {args.server} for {trial.id}")
    print("\n".join(f.line() for f in findings))
    return Exit.OK if all(f.ok is not False for f in findings) else Exit.SERVER
