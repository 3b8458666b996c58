"""Bulk export files: the manifest, its error and deletion files, and the baseline folder.

Rule: pure reading and folder work, no HTTP. A manifest is checked for shape
(one line of explanation, never a crash); an error file is summarised as
counts and its first messages; a ``deleted`` Bundle becomes the set of
``(type, id)`` it names. A baseline folder is never modified in place by an
export under way: the next baseline is *staged* beside it (files hard-linked,
changed ones rewritten to new files), so a run that fails or is partial
leaves the previous baseline exactly as it was.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..private_files import write_private
from ..transport.client import ServerError, issue_text
from ..transport.redact import shown
from ..transport.urls import Reach

RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
FIRST_MESSAGES = 3  # messages of an error file quoted in data_quality
NOTICES = frozenset({"warning", "information"})  # OperationOutcome severities that are no error
MAX_LINE = 64 * 1024 * 1024  # the longest line of an error or deleted file that is read


class BadManifest(ServerError):
    """The export finished with a manifest the tool cannot read."""


@dataclass(frozen=True)
class Manifest:
    """What the tool reads of a Bulk export's manifest, checked for shape."""

    transaction_time: str | None
    requires_token: bool
    output: tuple[tuple[str, str], ...]  # (type, url) of each file
    errors: tuple[str, ...]  # the url of each error file
    deleted: tuple[str, ...] = ()  # the url of each Bundle of deleted resources
    counts: tuple[int | None, ...] = ()  # each output file's resources, where the server says

    @property
    def reach(self) -> Reach:
        """Where the files may be: the server itself when they need its token."""
        return Reach.SERVER if self.requires_token else Reach.STORAGE


def read_manifest(body: object) -> Manifest:
    """A manifest's parts; ServerError (one line) when its shape is not a manifest's.

    >>> read_manifest({"transactionTime": "2026-01-01T00:00:00Z", "requiresAccessToken": True,
    ...                "output": [{"type": "Patient", "url": "https://h/f/1"}],
    ...                "deleted": [{"type": "Bundle", "url": "https://h/f/d"}]}).deleted
    ('https://h/f/d',)
    >>> read_manifest({"output": "https://h/f/1"})
    Traceback (most recent call last):
    fhir_cohort.sources.bulk_files.BadManifest: the export's manifest is malformed: output is \
not a list
    """

    def malformed(what: str) -> BadManifest:
        return BadManifest(f"the export's manifest is malformed: {what}")

    if not isinstance(body, dict):
        raise malformed("it is not a JSON object")
    moment = body.get("transactionTime")
    if moment is not None and not isinstance(moment, str):
        raise malformed("transactionTime is not a string")
    requires = body.get("requiresAccessToken", False)
    if not isinstance(requires, bool):
        raise malformed("requiresAccessToken is not true or false")
    parts: dict[str, list] = {}
    for key in ("output", "error", "deleted"):
        items = body.get(key) or []
        if not isinstance(items, list):
            raise malformed(f"{key} is not a list")
        if not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in items):
            raise malformed(f"an {key} item has no url string")
        parts[key] = items
    return Manifest(
        moment,
        requires,
        tuple((str(i.get("type", "")), i["url"]) for i in parts["output"]),
        tuple(i["url"] for i in parts["error"]),
        tuple(i["url"] for i in parts["deleted"]),
        tuple(_count(i.get("count")) for i in parts["output"]),
    )


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def resources_in(path: Path) -> int:
    """How many non-empty lines an NDJSON file holds (each one resource, read or not)."""
    return sum(1 for line in bounded_lines(path) if line.strip())


def named_types(message: str, asked: list[str]) -> list[str]:
    """The asked-for types an error message names, when it names some but not all of
    them (a server refusing one type); [] when it names none or every one (it may be
    echoing the whole request).

    >>> asked = ["Condition", "Medication", "MedicationRequest", "Patient"]
    >>> named_types('The requested resource type "Medication" is not available', asked)
    ['Medication']
    >>> named_types("_type=Condition,Medication,MedicationRequest,Patient is bad", asked)
    []
    """
    named = [t for t in asked if re.search(rf"(?<![A-Za-z]){t}(?![A-Za-z])", message)]
    return named if len(named) < len(asked) else []


def offered_types(capabilities: object) -> frozenset[str] | None:
    """The resource types a CapabilityStatement says the server holds (None: it does not
    say, or it is not a CapabilityStatement).

    >>> sorted(offered_types({"resourceType": "CapabilityStatement",
    ...     "rest": [{"mode": "server", "resource": [{"type": "Patient"}, {"type": 3}]}]}))
    ['Patient']
    >>> offered_types({"resourceType": "Bundle"}) is None
    True
    """
    if not isinstance(capabilities, dict):
        return None
    if capabilities.get("resourceType") != "CapabilityStatement":
        return None
    rests = capabilities.get("rest")
    types: set[str] = set()
    said = False
    for rest in rests if isinstance(rests, list) else ():
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        resources = rest.get("resource")
        if isinstance(resources, list):
            said = True
            types |= {
                r["type"]
                for r in resources
                if isinstance(r, dict) and isinstance(r.get("type"), str)
            }
    return frozenset(types) if said else None


@dataclass(frozen=True)
class ErrorSummary:
    """An error file in numbers: issues that are errors (or cannot be read), and those the
    server marks only as warnings or information (the spec lets ``error`` hold both)."""

    errors: int
    notices: int
    first_errors: tuple[str, ...]
    first_notices: tuple[str, ...]


def summarise_errors(path: Path) -> ErrorSummary:
    """An error file (OperationOutcome NDJSON): how many issues of each weight, and the
    first messages of each.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "e.ndjson"
    >>> _ = p.write_bytes(b'{"resourceType":"OperationOutcome","issue":[{"diagnostics":"a",'
    ...     b'"severity":"error"},{"details":{"text":"b"},"severity":"information"}]}\\n'
    ...     b'not json\\n')
    >>> summarise_errors(p)
    ErrorSummary(errors=2, notices=1, first_errors=('a', 'a line that is not an \
OperationOutcome'), first_notices=('b',))
    """
    counts = {True: 0, False: 0}
    first: dict[bool, list[str]] = {True: [], False: []}
    for line in bounded_lines(path):
        if not line.strip():
            continue
        outcome = load_line(line)
        issues = outcome.get("issue") if outcome else None
        if not isinstance(issues, list) or not issues:
            issues = [None]
        for issue in issues:
            severity = issue.get("severity") if isinstance(issue, dict) else None
            error = severity not in NOTICES  # unknown weight: taken as an error
            counts[error] += 1
            if len(first[error]) < FIRST_MESSAGES:
                text = issue_text(issue) or "a line that is not an OperationOutcome"
                first[error].append(shown(text, 160))
    return ErrorSummary(counts[True], counts[False], tuple(first[True]), tuple(first[False]))


def deleted_resources(path: Path) -> tuple[set[tuple[str, str]], int]:
    """The ``(type, id)`` the ``deleted`` Bundles of the export name (entries whose request
    is a DELETE of ``Type/id``), and how many lines are not a Bundle (deletions that
    cannot be read). The file is NDJSON, or one Bundle however laid out.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "d.json"
    >>> _ = p.write_bytes(b'{"resourceType":"Bundle","entry":[{"request":{"method":"DELETE",'
    ...     b'"url":"Condition/c1"}},{"request":{"method":"DELETE","url":"Patient/x/y"}}]}\\n'
    ...     b'{"resourceType":"Patient"}\\n')
    >>> deleted_resources(p)
    ({('Condition', 'c1')}, 1)
    """
    found: set[tuple[str, str]] = set()
    whole = load_line(path.read_bytes()) if path.stat().st_size <= MAX_LINE else None
    bodies = [whole] if whole else (load_line(x) for x in bounded_lines(path) if x.strip())
    unreadable = 0
    for body in bodies:
        if body is None or body.get("resourceType") != "Bundle":
            unreadable += 1
            continue
        entries = body.get("entry")
        for entry in entries if isinstance(entries, list) else ():
            request = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(request, dict) or request.get("method") != "DELETE":
                continue
            url = request.get("url")
            kind, _, rid = (url if isinstance(url, str) else "").partition("/")
            if RESOURCE_TYPE.match(kind) and rid and "/" not in rid:
                found.add((kind, rid))
    return found, unreadable


def bounded_lines(path: Path, limit: int = MAX_LINE) -> Iterator[bytes]:
    """The lines of a file, one at a time; a line longer than ``limit`` is given as
    ``b"-"`` (not JSON), its bytes skipped, so a hostile file cannot fill memory.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f"
    >>> _ = p.write_bytes(b"abcdefghij\\nxy\\nz")
    >>> list(bounded_lines(p, 4))
    [b'-', b'xy\\n', b'z']
    """
    with path.open("rb") as stream:
        skipping = False
        for chunk in iter(lambda: stream.readline(limit), b""):
            whole = chunk.endswith(b"\n")
            if not skipping:
                yield chunk if whole or len(chunk) < limit else b"-"
            skipping = not whole and len(chunk) == limit


def load_line(line: bytes) -> dict | None:
    """One NDJSON line as a JSON object (None: not one)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _type_and_id(line: bytes) -> tuple[str, str] | None:
    resource = load_line(line) if line.strip() else None
    return (
        None if resource is None else (str(resource.get("resourceType")), str(resource.get("id")))
    )


def link_folder(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source``'s files made of hard links (no data copied); a
    file later rewritten in ``target`` by :func:`write_private` gets a new inode, so
    ``source`` stays as it was."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, mode=0o700)
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if path.is_file():
                os.link(path, target / path.name)


def merge_export(
    staged: Path, incoming: Path, deleted: AbstractSet[tuple[str, str]] = frozenset()
) -> int:
    """Fold a ``_since`` export into ``staged`` (a linked copy of the baseline): a changed
    resource replaces its copy, a deleted one is dropped, a new one is added.

    Only files of a type the delta changes or deletes are rewritten (each to a new
    file, then renamed); the delta's files are then linked in. ``incoming`` is left
    as it is, so running it again on a fresh copy gives the same result.
    Returns how many copies were replaced or dropped.
    """
    changed: dict[str, set[str]] = {}
    for kind, rid in deleted:
        changed.setdefault(kind, set()).add(rid)
    for path in sorted(incoming.glob("*.ndjson")):
        with path.open("rb") as stream:
            for line in stream:
                found = _type_and_id(line)
                if found:
                    changed.setdefault(found[0], set()).add(found[1])
    replaced = 0
    for path in sorted(staged.glob("*.ndjson")):
        kind = path.name.split(".", 1)[0]  # files are named Type.stamp.index.ndjson
        if kind != "Resource" and kind not in changed:
            continue
        kept = []
        with path.open("rb") as stream:
            for line in stream:
                found = _type_and_id(line)
                if found and found[1] in changed.get(found[0], ()):
                    replaced += 1
                else:
                    kept.append(line)
        write_private(path, b"".join(kept))
    for path in sorted(incoming.glob("*.ndjson")):
        os.link(path, staged / path.name)
    return replaced


def replace_folder(baseline: Path, staged: Path) -> None:
    """The staged export becomes the baseline (idempotent: safe to repeat after a crash)."""
    if not staged.exists():
        return  # already swapped in by a run that died just after
    old = baseline.with_name(baseline.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if baseline.exists():
        os.replace(baseline, old)
    os.replace(staged, baseline)
    shutil.rmtree(old, ignore_errors=True)


def holds_data(folder: Path) -> bool:
    """Does the folder hold at least one non-empty NDJSON file?"""
    return any(p.stat().st_size > 0 for p in folder.glob("*.ndjson"))
