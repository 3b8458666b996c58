"""Mutation run: single-value mutations of the bundled cohort into invalid FHIR.

    python bench/mutations.py --count 10000 --seed 1 --workers 2 --json bench/data/mutations.json

Each mutation changes one value of one resource of ``fixtures/misle-cohort`` into
something FHIR R4 does not allow, of one of five kinds:

* ``wrong-type``: any element of any resource (at any depth) gets a value of another
  JSON type (a string for a number, a number for an object, ``null``, a list ...);
* ``impossible-date``: a date, dateTime or instant element gets a string that is not
  one (``2026-02-30``, ``2026-5-21``, ``99999-01-01``, a time without a zone ...);
* ``unknown-code``: a code with a required value set (a status, an intent, a
  Condition's clinical or verification status, a comparator) gets a code outside it;
* ``broken-reference``: a patient or medication reference is written so that it
  cannot be resolved here (another server, ``urn:uuid:`` outside a Bundle, an invalid
  id, a number);
* ``deleted-required``: an element FHIR requires (a status, a subject, an
  Observation's code, a medication, an administration's date, an intent) is removed.

The mutated cohort is screened (``engines.embedded.screen`` and every output writer; the
report, the slowest, for one mutation in ``REPORT_EVERY``) and
compared with the unmutated one, patient by patient. A mutation *fails* when the
screen raises (the command line would exit 1) or when a patient becomes eligible or
in a washout who was neither, becomes eligible from a washout, or leaves a washout
earlier: an invalid value must never make a patient look more eligible (moving to
needs-review, with a reason, is the right answer). The run prints and writes its
counts; ``docs/mutations.md`` records the long run. ``tests/test_mutations.py``
draws from the same mutations with hypothesis.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import multiprocessing as mp
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "misle-cohort"
AS_OF = date(2026, 6, 30)

REPORT_EVERY = 10  # report.html is rendered for one mutation in this many (it is the slowest)
KINDS = ("wrong-type", "impossible-date", "unknown-code", "broken-reference", "deleted-required")
DATE_KEYS = frozenset(
    {
        "birthDate",
        "deceasedDateTime",
        "onsetDateTime",
        "recordedDate",
        "effectiveDateTime",
        "effectiveInstant",
        "issued",
        "performedDateTime",
        "authoredOn",
        "start",
        "end",
        "lastUpdated",
    }
)
IMPOSSIBLE_DATES = (
    "2026-02-30",
    "2026-5-21",
    "99999-01-01",
    "0000-00-00",
    "2026-13-01",
    "2026-06-31",
    "20260601",
    "2026-06-01T25:00:00Z",
    "2026-06-01T10:00:00",
    "2026-06-01 10:00",
    "",
    " 2026-06-01",
    "yesterday",
    "9999-99-99",
)
CODE_PATHS = (
    ("status",),
    ("intent",),
    ("clinicalStatus", "coding", 0, "code"),
    ("verificationStatus", "coding", 0, "code"),
    ("valueQuantity", "comparator"),
)
UNKNOWN_CODES = ("garbage", "Final", "COMPLETED", "", " active", "completed ", "done", "Active")
REFERENCE_KEYS = ("subject", "patient", "medicationReference")
REQUIRED = {
    "Observation": ("status", "code"),
    "Condition": ("subject",),
    "Procedure": ("status", "subject"),
    "MedicationAdministration": (
        "status",
        "subject",
        "medicationCodeableConcept",
        "medicationReference",
        "effectiveDateTime",
        "effectivePeriod",
    ),
    "MedicationStatement": (
        "status",
        "subject",
        "medicationCodeableConcept",
        "medicationReference",
    ),
    "MedicationRequest": (
        "status",
        "intent",
        "subject",
        "medicationCodeableConcept",
        "medicationReference",
    ),
}


# -- the cohort as data ----------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Where a resource sits: a file, a line (NDJSON) or an entry (Bundle)."""

    file: str
    index: int


def load(folder: Path = COHORT) -> dict[str, object]:
    """Every data file of a cohort folder, parsed: NDJSON as a list of resources, a
    Bundle file as its document."""
    files: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(folder))
        data = path.read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        if ".ndjson" in name:
            files[name] = [orjson.loads(line) for line in data.splitlines() if line.strip()]
        else:
            files[name] = orjson.loads(data)
    return files


def write(files: dict[str, object], folder: Path) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            data = b"".join(orjson.dumps(r) + b"\n" for r in content)
        else:
            data = orjson.dumps(content)
        path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)


def places(files: dict[str, object]) -> list[Place]:
    """Every resource of the cohort."""
    found = []
    for name, content in files.items():
        if isinstance(content, list):
            found += [Place(name, i) for i in range(len(content))]
        else:
            found += [Place(name, i) for i in range(len(content.get("entry", [])))]  # type: ignore[union-attr]
    return found


def resource_at(files: dict[str, object], place: Place) -> dict:
    content = files[place.file]
    if isinstance(content, list):
        return content[place.index]
    return content["entry"][place.index]["resource"]  # type: ignore[index]


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every element path inside a resource (not the resource itself)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*prefix, index))
            found += paths(item, (*prefix, index))
    return found


def get(value: object, path: tuple) -> object:
    for part in path:
        value = value[part]  # type: ignore[index]
    return value


def put(value: object, path: tuple, new: object) -> None:
    parent = get(value, path[:-1])
    parent[path[-1]] = new  # type: ignore[index]


def other_types(value: object) -> list[object]:
    """Values of JSON types FHIR does not allow where ``value`` stands."""
    if isinstance(value, bool):
        return ["true" if value else "false", 1, None, [value]]
    if isinstance(value, (int, float)):
        return [str(value), True, None, [value], {"value": value}]
    if isinstance(value, str):
        return [7, True, None, [value], {"value": value}]
    if isinstance(value, list):
        return [value[0] if value else {}, "x", 5, None]
    return [[value], "x", 5, True, None]


# -- one mutation ----------------------------------------------------------------------
@dataclass(frozen=True)
class Mutation:
    kind: str
    place: Place
    path: tuple
    value: object  # the new value (ignored for deleted-required)

    def describe(self) -> str:
        where = ".".join(str(p) for p in self.path)
        if self.kind == "deleted-required":
            return f"{self.kind}: {self.place.file}[{self.place.index}] del {where}"
        shown = orjson.dumps(self.value).decode()[:40]
        return f"{self.kind}: {self.place.file}[{self.place.index}] {where} = {shown}"


def choices(files: dict[str, object], place: Place, kind: str) -> list[Mutation]:
    """Every mutation of ``kind`` that ``place``'s resource allows."""
    resource = resource_at(files, place)
    rtype = resource.get("resourceType")
    found: list[Mutation] = []
    if kind == "wrong-type":
        for path in paths(resource):
            found += [Mutation(kind, place, path, v) for v in other_types(get(resource, path))]
    elif kind == "impossible-date":
        for path in paths(resource):
            if isinstance(path[-1], str) and path[-1] in DATE_KEYS:
                found += [Mutation(kind, place, path, v) for v in IMPOSSIBLE_DATES]
    elif kind == "unknown-code":
        for path in CODE_PATHS:
            try:
                get(resource, path)
            except (KeyError, IndexError, TypeError):
                continue
            found += [Mutation(kind, place, path, v) for v in UNKNOWN_CODES]
    elif kind == "broken-reference":
        for key in REFERENCE_KEYS:
            target = resource.get(key)
            if not isinstance(target, dict) or not isinstance(target.get("reference"), str):
                continue
            found += [
                Mutation(kind, place, (key, "reference"), v)
                for v in broken_references(target["reference"])
            ]
    else:
        for key in REQUIRED.get(rtype, ()):  # type: ignore[arg-type]
            if key in resource:
                found.append(Mutation(kind, place, (key,), None))
    return found


def broken_references(reference: str) -> list[object]:
    kind, _, rid = reference.rpartition("/")
    kind = kind.rsplit("/", 1)[-1] or ("Medication" if reference.startswith("#") else "Patient")
    rid = rid or reference.lstrip("#")
    return [
        f"{kind}/",
        f"{kind}/{rid} ",
        f"{kind}/ {rid}",
        f"urn:uuid:{rid}",
        f"https://elsewhere.example/fhir/{kind}/{rid}",
        f"{kind}/{rid}/_history",
        f"{kind}/{rid}?_format=json",
        f"{kind.lower()}/{rid}",
        f"{kind}//{rid}",
        "#not-contained",
        42,
        True,
    ]


def apply(files: dict[str, object], mutation: Mutation) -> dict[str, object]:
    """A copy of the cohort with the mutation made (only the changed file is copied)."""
    changed = dict(files)
    changed[mutation.place.file] = copy.deepcopy(files[mutation.place.file])
    resource = resource_at(changed, mutation.place)
    if mutation.kind == "deleted-required":
        del get(resource, mutation.path[:-1])[mutation.path[-1]]  # type: ignore[union-attr]
    else:
        put(resource, mutation.path, mutation.value)
    return changed


# -- screening and judging -------------------------------------------------------------
def outcome(folder: Path, trial, report: bool = True) -> dict[str, tuple]:
    """Each listed patient's (status, eligible_from, reasons) after screening ``folder``
    and writing every output (a failure anywhere raises, as the command line would exit
    1); ``report=False`` skips report.html, the slowest output."""
    from fhir_cohort.engines.embedded import screen
    from fhir_cohort.outputs.candidates import csv_bytes, json_bytes, screening_dict
    from fhir_cohort.outputs.group import build_group, group_json
    from fhir_cohort.outputs.report import render
    from fhir_cohort.outputs.terminal import summary
    from fhir_cohort.sources.files import FileSource

    with tempfile.TemporaryDirectory(prefix="mutation-store-") as work:
        result = screen([FileSource(folder)], trial, AS_OF, workdir=Path(work))
    json_bytes(result)
    csv_bytes(result)
    if report:
        render(result)
    group_json(build_group(result))
    summary(result)
    data = screening_dict(result)
    return {
        c["patient"]: (c["status"], c["eligible_from"], c["reasons"]) for c in data["candidates"]
    }


def violations(before: dict[str, tuple], after: dict[str, tuple]) -> list[tuple[str, str, str]]:
    """Patients an invalid value made look more eligible: (patient, before, after).

    Becoming eligible (from anything else, a washout included), entering a washout
    from anything but eligible, or leaving a washout earlier.
    """
    found = []
    for patient, (status, until, _) in after.items():
        was, was_until, _ = before.get(patient, ("not-a-candidate", None, True))
        entered = (status == "eligible" and was != "eligible") or (
            status == "washout" and was not in ("washout", "eligible")
        )
        if entered:
            found.append((patient, was, status))
        elif status == was == "washout" and until < was_until:
            found.append((patient, f"washout until {was_until}", f"washout until {until}"))
    return found


def unexplained(after: dict[str, tuple]) -> list[str]:
    """needs-review patients without a reason (every one must say why)."""
    return [
        p for p, (status, _, reasons) in after.items() if status == "needs-review" and not reasons
    ]


def draw(files: dict[str, object], rng: random.Random) -> Mutation:
    """One random mutation: a kind, a resource that allows it, one of its mutations."""
    every = places(files)
    while True:
        kind = rng.choice(KINDS)
        found = choices(files, rng.choice(every), kind)
        if found:
            return rng.choice(found)


def _run(arguments: tuple[int, int, int]) -> dict:
    """One worker: ``count`` mutations from ``seed``, judged against the baseline."""
    seed, count, worker = arguments
    from fhir_cohort.criteria.language import load as load_trial

    trial = load_trial("misle")
    files = load()
    rng = random.Random(seed * 1000 + worker)
    counts: Counter = Counter()
    failures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mutations-") as scratch:
        base = Path(scratch) / "base"
        write(files, base)
        before = outcome(base, trial)
        for index in range(count):
            mutation = draw(files, rng)
            folder = Path(scratch) / "m"
            shutil.rmtree(folder, ignore_errors=True)
            write(apply(files, mutation), folder)
            counts["mutations"] += 1
            counts[f"kind:{mutation.kind}"] += 1
            try:
                after = outcome(folder, trial, report=not index % REPORT_EVERY)
            except Exception as error:  # the command line would exit 1
                counts["crashes"] += 1
                failures.append({"mutation": mutation.describe(), "crash": repr(error)[:300]})
                continue
            bad = violations(before, after)
            counts["more_eligible"] += len(bad)
            counts["unexplained_needs_review"] += len(unexplained(after))
            if bad:
                failures.append({"mutation": mutation.describe(), "more_eligible": bad})
            changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
            counts["mutations_changing_an_outcome"] += bool(changed)
            counts["patients_changed"] += len(changed)
    return {"counts": counts, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutations (default 10000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 1)))
    parser.add_argument("--json", type=Path, help="write the counts and failures here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    shares = [
        (args.seed, args.count // args.workers + (i < args.count % args.workers), i)
        for i in range(args.workers)
    ]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        parts = pool.map(_run, shares)
    counts: Counter = Counter()
    failures: list[dict] = []
    for part in parts:
        counts.update(part["counts"])
        failures += part["failures"]
    seconds = time.perf_counter() - started
    report = {
        "seed": args.seed,
        "workers": args.workers,
        "seconds": round(seconds, 1),
        "counts": dict(sorted(counts.items())),
        "failures": failures[:50],
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 1 if counts["crashes"] or counts["more_eligible"] else 0


if __name__ == "__main__":
    sys.exit(main())
