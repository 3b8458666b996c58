"""Seed: upload a synthetic cohort to a FHIR server, to watch a screen end to end.

Resources are read with :class:`~fhir_cohort.sources.files.FileSource` (so
Bundles, NDJSON and gzip all work), de-duplicated by the rules page's rule
(the later ``meta.lastUpdated`` wins, else the first seen), and sent as
``transaction`` Bundles of ``PUT Type/id`` entries, so seeding twice leaves
one copy of each. A server that refuses transactions gets one ``PUT`` per
resource instead. Only synthetic data belongs on a public sandbox.

Rule: a 200 is not a success. Some servers run a transaction as a batch and
answer 200 with an error in one entry's ``response`` (Medplum's router), so
every entry's status is read, and a single ``PUT`` refused (4xx) is recorded,
not fatal. Every resource that was not confirmed written is named, and the
command exits 4 (partial: some written, some not); 3 when the server failed
(no answer, 5xx) or wrote nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import Exit
from ..quality import Note
from ..sources import Progress
from ..sources.files import FileSource
from ..transport.client import FhirClient, ServerError, issue_text
from ..transport.redact import shown
from .common import bundled_fixtures
from .server import server_client

BUNDLE_SIZE = 200
# Referenced resources first, so a server that checks references finds them.
ORDER = ("Medication", "Patient", "Group")


FAILURES_SHOWN = 10


@dataclass
class SeedReport:
    resources: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    puts: int = 0
    notes: list[Note] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "Type/id: why", not confirmed written


def entry_failures(answer: object, sent: list[dict]) -> list[str]:
    """The entries of a transaction or batch answer that were not written, as
    ``Type/id: why`` (an answer that cannot be read confirms nothing).

    >>> sent = [{"resourceType": "A", "id": "1"}, {"resourceType": "A", "id": "2"}]
    >>> ok = {"response": {"status": "201 Created"}}
    >>> bad = {"response": {"status": "400", "outcome": {"resourceType": "OperationOutcome",
    ...        "issue": [{"diagnostics": "id mismatch"}]}}}
    >>> entry_failures({"resourceType": "Bundle", "entry": [ok, bad]}, sent)
    ['A/2: 400 id mismatch']
    >>> entry_failures({"resourceType": "Bundle", "entry": [ok]}, sent)[1]
    'A/2: the answer has 1 entries for 2 sent; nothing confirmed'
    """
    entries = answer.get("entry") if isinstance(answer, dict) else None
    names = [f"{r['resourceType']}/{r['id']}" for r in sent]
    if not isinstance(entries, list) or len(entries) != len(sent):
        count = len(entries) if isinstance(entries, list) else "no"
        return [
            f"{n}: the answer has {count} entries for {len(sent)} sent; nothing confirmed"
            for n in names
        ]
    failed = []
    for name, entry in zip(names, entries, strict=True):
        response = entry.get("response") if isinstance(entry, dict) else None
        status = response.get("status") if isinstance(response, dict) else None
        if isinstance(status, str) and status.strip()[:1] == "2":
            continue
        outcome = response.get("outcome") if isinstance(response, dict) else None
        issues = outcome.get("issue") if isinstance(outcome, dict) else None
        why = "; ".join(filter(None, map(issue_text, issues if isinstance(issues, list) else [])))
        said = shown("" if status is None else str(status), 20) or "no status"
        failed.append(f"{name}: {said} {shown(why, 160)}".rstrip())
    return failed


def _newer(a: dict, b: dict) -> bool:
    stamp_a = (a.get("meta") or {}).get("lastUpdated")
    stamp_b = (b.get("meta") or {}).get("lastUpdated")
    return bool(stamp_a and stamp_b and stamp_a > stamp_b)


def collect(source: FileSource, notes: list[Note]) -> list[dict]:
    """One copy per type and id, referenced types first."""
    chosen: dict[tuple[str, str], dict] = {}
    for raw in source.read(notes.append, lambda _: None):
        key = (raw.resource["resourceType"], raw.resource["id"])
        if key not in chosen or _newer(raw.resource, chosen[key]):
            chosen[key] = raw.resource
    rank = {kind: i for i, kind in enumerate(ORDER)}
    return sorted(chosen.values(), key=lambda r: rank.get(r["resourceType"], len(ORDER)))


def _transaction(resources: Iterable[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


def seed(client: FhirClient, source: FileSource, progress: Progress = lambda _: None) -> SeedReport:
    notes: list[Note] = []
    resources = collect(source, notes)
    report = SeedReport(resources=len(resources), notes=notes)
    for resource in resources:
        kind = resource["resourceType"]
        report.by_type[kind] = report.by_type.get(kind, 0) + 1
    use_transactions = True
    headers = {"Content-Type": "application/fhir+json"}
    for start in range(0, len(resources), BUNDLE_SIZE):
        chunk = resources[start : start + BUNDLE_SIZE]
        if use_transactions:
            try:
                answer = client.json(
                    "POST", "", json=_transaction(chunk), headers=headers, kind="seed-transaction"
                )
                report.transactions += 1
                report.failed += entry_failures(answer, chunk)
                progress(len(chunk))
                continue
            except ServerError as error:
                if not any(f"HTTP {code}" in str(error) for code in (400, 404, 405, 422, 501)):
                    raise
                use_transactions = False  # fall back to one PUT each, from this chunk on
        for resource in chunk:
            name = f"{resource['resourceType']}/{resource['id']}"
            try:
                client.request("PUT", name, json=resource, headers=headers, kind="seed-put")
            except ServerError as error:
                if error.status is None or error.status >= 500:
                    raise
                report.failed.append(f"{name}: {error}")
            report.puts += 1
            progress(1)
    return report


def run(args: argparse.Namespace) -> int:
    paths = args.source or [bundled_fixtures()]
    source = FileSource(*paths)
    if not args.yes:
        print(
            f"fhir-cohort seed would write the resources in {', '.join(map(str, paths))} "
            f"({len(source.files)} files) to {args.server} as PUTs (replacing resources "
            "with the same ids). Only synthetic data belongs on a shared sandbox. "
            "Run again with --yes to do it.",
            file=sys.stderr,
        )
        return Exit.USAGE
    bar = tqdm(desc="seeding", unit="resources", leave=False, file=sys.stderr, disable=None)
    report = seed(server_client(args), source, bar.update)
    bar.close()
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.by_type.items()))
    how = (f"{report.transactions} transaction Bundles" if report.transactions else "") + (
        f"{' and ' if report.transactions and report.puts else ''}{report.puts} single PUTs"
        if report.puts
        else ""
    )
    if not report.failed:
        print(f"seeded {report.resources} resources to {args.server} ({kinds}) in {how}")
        return Exit.OK
    written = report.resources - len(report.failed)
    print(
        f"seeded {written} of {report.resources} resources to {args.server} ({kinds}) in {how}; "
        f"{len(report.failed)} not written:",
        file=sys.stderr,
    )
    for failure in report.failed[:FAILURES_SHOWN]:
        print(f"  {shown(failure, 300)}", file=sys.stderr)
    if len(report.failed) > FAILURES_SHOWN:
        print(f"  (and {len(report.failed) - FAILURES_SHOWN} more)", file=sys.stderr)
    return Exit.PARTIAL if written else Exit.SERVER
