"""Seed: upload a synthetic cohort to a FHIR server, to watch a screen end to end.

Resources are read with :class:`~fhir_cohort.sources.files.FileSource` (so
Bundles, NDJSON and gzip all work), de-duplicated by the rules page's rule
(the later ``meta.lastUpdated`` wins, else the first seen), and sent as
``transaction`` Bundles of ``PUT Type/id`` entries, so seeding twice leaves
one copy of each. A server that refuses transactions gets one ``PUT`` per
resource instead. Only synthetic data belongs on a public sandbox.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tqdm import tqdm

from ..errors import Exit
from ..quality import Note
from ..sources.files import FileSource
from ..transport.client import FhirClient, ServerError
from .common import bundled_fixtures, server_client

BUNDLE_SIZE = 200
# Referenced resources first, so a server that checks references finds them.
ORDER = ("Medication", "Patient", "Group")


@dataclass
class SeedReport:
    resources: int = 0
    by_type: dict[str, int] | None = None
    transactions: int = 0
    puts: int = 0
    notes: list[Note] | None = None


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


def seed(
    client: FhirClient, source: FileSource, progress: Callable[[int], None] = lambda _: None
) -> SeedReport:
    notes: list[Note] = []
    resources = collect(source, notes)
    report = SeedReport(resources=len(resources), notes=notes, by_type={})
    for resource in resources:
        kind = resource["resourceType"]
        report.by_type[kind] = report.by_type.get(kind, 0) + 1  # type: ignore[index]
    use_transactions = True
    headers = {"Content-Type": "application/fhir+json"}
    for start in range(0, len(resources), BUNDLE_SIZE):
        chunk = resources[start : start + BUNDLE_SIZE]
        if use_transactions:
            try:
                client.request(
                    "POST", "", json=_transaction(chunk), headers=headers, kind="seed-transaction"
                )
                report.transactions += 1
                progress(len(chunk))
                continue
            except ServerError as error:
                if not any(f"HTTP {code}" in str(error) for code in (400, 404, 405, 422, 501)):
                    raise
                use_transactions = False  # fall back to one PUT each, from this chunk on
        for resource in chunk:
            client.request(
                "PUT",
                f"{resource['resourceType']}/{resource['id']}",
                json=resource,
                headers=headers,
                kind="seed-put",
            )
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
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted((report.by_type or {}).items()))
    how = (f"{report.transactions} transaction Bundles" if report.transactions else "") + (
        f"{' and ' if report.transactions and report.puts else ''}{report.puts} single PUTs"
        if report.puts
        else ""
    )
    print(f"seeded {report.resources} resources to {args.server} ({kinds}) in {how}")
    return Exit.OK
