"""File sources: Bulk Data NDJSON (``.ndjson``, ``.ndjson.gz``) and Bundle JSON.

A path may be a file or a folder (read recursively, in sorted order; hidden
files and an exporter's ``log.ndjson`` skipped). NDJSON is streamed line by
line; a ``.json`` file is one resource or one Bundle (searchset, collection,
transaction, batch, ...), whose ``urn:uuid:`` references are resolved to
``Type/id`` within the Bundle. A leading byte-order mark is not data.

Rule: memory is bounded whatever the files hold (:class:`FileLimits`: a line
longer than ``line``, a Bundle larger than ``bundle`` or a file inflating past
``inflated`` is not read whole), and bad input is a note, never an exception.
A line that cannot be read (not JSON, too long) is attributed to the patient
its bytes name (``"Patient/<id>"``, or a Patient's own id), whose answer then
cannot rest on what is missing; one that names no patient means the input was
not all read. A line that is not valid UTF-8 but parses once its bad bytes are
replaced is read as a record that cannot be read for certain (``DOUBT``),
unless the bad bytes touch its type, id, code or patient.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, partial
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

import orjson

from ..quality import Note
from . import DOUBT, NoteSink, Progress, RawResource, SourceError, line_in_file, patient_of

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")
_REFERENCE_FIELDS = ("subject", "patient", "medicationReference")
BOM = b"\xef\xbb\xbf"
MIB = 1 << 20
_CHUNK = MIB  # how much of an over-long line is read at a time to skip it
# What a file is read ahead by: lines of about a kilobyte cost a third of the time they
# cost with Python's default 8 KiB (fewer refills, and fewer lines across two of them).
_BUFFER = MIB

EXPORT_LOGS = frozenset({"log.ndjson"})  # an exporter's own event log, not FHIR data

# How an unreadable line names its patient: a reference, or a Patient's own id.
_REFERENCE = re.compile(rb'Patient/([A-Za-z0-9\-.]{1,64})(?=["/])')
_PATIENT_TYPE = re.compile(rb'"resourceType"\s*:\s*"Patient"')
_OWN_ID = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"')
# Elements whose bytes decide what a record is and whose it is: a replaced byte in
# them makes the record unreadable, not merely doubtful.
_IDENTITY = ("resourceType", "id", "subject", "patient")


def _identity(resource: dict) -> str:
    """The text of the elements that say what a record is and whose (the codings' systems
    and codes included, their displays not)."""
    concept = resource.get("code")
    codings = concept.get("coding") if type(concept) is dict else concept
    if type(codings) is list:
        codings = [(c.get("system"), c.get("code")) if type(c) is dict else c for c in codings]
    parts = [resource.get(k) for k in _IDENTITY]
    return orjson.dumps([*parts, codings], default=str).decode()


@dataclass(frozen=True)
class FileLimits:
    """What one file may hold before it is not read whole (bytes); far above any real
    export, they keep memory bounded against a hostile or broken file."""

    line: int = 64 * MIB
    bundle: int = 64 * MIB
    inflated: int = 64 * 1024 * MIB

    def __post_init__(self) -> None:
        if min(self.line, self.bundle, self.inflated) < 1:
            raise SourceError("file size limits must be at least 1 byte")


def named_patients(data: bytes | memoryview) -> list[str]:
    """The patients the bytes of an unreadable record name, in order.

    >>> named_patients(b'{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"v')
    ['p1']
    >>> named_patients(b'{"resourceType":"Patient","id":"p2","birthDate":"19')
    ['p2']
    >>> named_patients(b'{"resourceType":"Observation","subject":{"reference":"Pati')
    []
    """
    found = [m.decode() for m in _REFERENCE.findall(data)]
    if _PATIENT_TYPE.search(data):
        own = _OWN_ID.search(data)
        if own:
            found.insert(0, own.group(1).decode())
    return list(dict.fromkeys(found))


def is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return (
        not name.startswith(".")
        and name not in EXPORT_LOGS
        and name.endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)
    )


def is_uri(path: str | Path) -> bool:
    """Is a source a URI for a Hadoop filesystem (``hdfs://``, ``s3a://``, ``file://``)
    rather than a local path?

    >>> is_uri("hdfs://nn:8020/exports/2026-11"), is_uri("s3a://bucket/x"), is_uri("./x")
    (True, True, False)
    """
    return isinstance(path, str) and _URI.match(path) is not None


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class FileSource:
    """Resources from files and folders of NDJSON and Bundle JSON.

    ``base`` is the base URL of the server the files were exported from: absolute
    references under it are this source's own (others are foreign). Paths given as
    URIs of a Hadoop filesystem (:func:`is_uri`) are kept in ``uris``, unlisted: only
    the Spark engine lists and reads them, through the cluster's own filesystem.
    """

    def __init__(
        self,
        *paths: str | Path,
        base: str | None = None,
        limits: FileLimits | None = None,
    ):
        self.files: list[Path] = []
        self.uris: list[str] = []
        self.base = base
        self.limits = limits or FileLimits()
        for raw in paths:
            if is_uri(raw):
                self.uris.append(str(raw))
                continue
            path = Path(raw)
            if not path.exists():
                raise SourceError(f"source {path} does not exist")
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and is_data_file(p))
                if not found:
                    raise SourceError(f"source folder {path} holds no .ndjson or .json files")
                self.files += found
            else:
                self.files.append(path)

    progress_unit = "B"

    def total_work(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def patients_not_read(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {"files": len(self.files)}

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
        if self.uris:
            raise SourceError(
                f"{self.uris[0]} is read through a Hadoop filesystem: use --engine spark"
            )
        for index, path in enumerate(self.files):
            yield from self.read_part(FilePart(index, path), note, progress)

    def parts(self, pieces: int, smallest: int = 8 * MIB) -> list[FilePart]:
        """The files as parts to read apart (in worker processes), in source order: each
        plain NDJSON file of at least ``smallest`` bytes in ``pieces`` line-aligned byte
        ranges, every other file whole."""
        found = []
        for index, path in enumerate(self.files):
            size = path.stat().st_size
            name = path.name.lower()
            if (
                pieces < 2
                or size < smallest
                or not name.endswith(NDJSON_SUFFIXES)
                or name.endswith(".gz")
            ):
                found.append(FilePart(index, path))
                continue
            bounds = [0] + [_line_start(path, size * k // pieces) for k in range(1, pieces)]
            bounds = [*sorted(set(bounds)), size]
            found += [FilePart(index, path, a, b) for a, b in pairwise(bounds) if b > a]
        return found

    def read_part(
        self, part: FilePart, note: NoteSink, progress: Progress
    ) -> Iterator[RawResource]:
        """The resources of one part of the files (each resource's line numbered as in
        its whole file)."""
        reader = _Reader(part.path, note, self.base, self.limits)
        reader.name = part.name or reader.name
        try:
            if part.path.name.lower().endswith(NDJSON_SUFFIXES):
                yield from reader.ndjson(progress, part)
            else:
                yield from reader.json(progress)
        except (OSError, EOFError, zlib.error) as error:
            note(Note("unreadable-file", f"cannot read the file: {error}", reader.name))


@dataclass(frozen=True, slots=True)
class FilePart:
    """A piece of the input read on its own: a whole file, or the lines of a plain NDJSON
    file from byte ``start`` (a line's start) to ``end`` (None: the end)."""

    index: int  # the file's place in the source's order
    path: Path
    start: int = 0
    end: int | None = None
    name: str | None = None  # what notes call the file (default: ``path``)


def _line_start(path: Path, offset: int) -> int:
    """The start of the first line at or after ``offset`` (read in bounded pieces)."""
    with path.open("rb") as file:
        if offset == 0:
            return 0
        file.seek(offset - 1)
        while True:
            piece = file.readline(_CHUNK)
            if not piece or piece.endswith(b"\n"):
                return file.tell()


class _Span(io.RawIOBase):
    """The bytes ``start`` to ``end`` of a plain file, open in ``file``, read as if they
    were the whole file (unbuffered: :func:`_open` puts a :data:`_BUFFER` in front of it).
    """

    def __init__(self, file: io.FileIO, path: Path, start: int, end: int):
        super().__init__()
        self._file, self._path = file, path
        self._file.seek(start)
        self._start, self._left = start, end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        got = self._file.readinto(memoryview(buffer)[: self._left]) or 0
        self._left -= got
        return got

    def tell(self) -> int:
        return self._file.tell() - self._start

    def lines_before(self) -> int:
        """How many line breaks the file holds before the span: read from the open file
        while the span is read (its position stays; a file renamed or removed meanwhile
        still answers), from the file opened again after."""
        if not self.closed:
            return _breaks(self._file.fileno(), self._start)
        with self._path.open("rb") as file:
            return _breaks(file.fileno(), self._start)

    def close(self) -> None:
        self._file.close()
        super().close()


def _breaks(fd: int, end: int) -> int:
    """How many line breaks the first ``end`` bytes of an open file hold (``pread``: the
    file's position stays)."""
    count, done = 0, 0
    while done < end:
        block = os.pread(fd, min(end - done, 16 * MIB), done)
        if not block:
            break
        count += block.count(b"\n")
        done += len(block)
    return count


def _open(path: Path, part: FilePart | None = None) -> tuple[BinaryIO, BinaryIO]:
    """The file (or part) as read, for its position, and the stream of its bytes (the
    same, or inflated), both with a :data:`_BUFFER`."""
    if part is not None and (part.start or part.end is not None):
        end = path.stat().st_size if part.end is None else part.end
        # Opened first: a file that cannot be opened leaves no half-made span to close.
        span = io.BufferedReader(_Span(io.FileIO(path, "r"), path, part.start, end), _BUFFER)
        return span, span
    raw = path.open("rb", buffering=_BUFFER)
    if path.name.lower().endswith(".gz"):
        return raw, io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), _BUFFER)
    return raw, raw


_NOT_PLAIN = frozenset({"Bundle", "OperationOutcome"})


class _Reader:
    """One file being read: its notes, its server base and its limits."""

    def __init__(
        self,
        path: Path,
        note: NoteSink,
        base: str | None,
        limits: FileLimits,
    ):
        self.path, self.name, self.note = path, str(path), note
        self.base, self.limits = base, limits

    def ndjson(self, progress: Progress, part: FilePart | None = None) -> Iterator[RawResource]:
        raw, stream = _open(self.path, part)
        # Lines are numbered from the part's first; how many come before it is counted
        # only if a note needs a line's number (reading the file up to the part took 6 %
        # of a two-worker screen).
        span = getattr(raw, "raw", None)
        before = (
            cache(span.lines_before) if isinstance(span, _Span) and part and part.start else None
        )
        name, base, cap = self.name, self.base, self.limits.line
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        done = 0
        with raw, stream:
            for number, line in enumerate(iter(partial(stream.readline, cap + 1), b""), 1):
                if not number & 2047:
                    position = raw.tell()
                    progress(position - done)
                    done = position
                    if stream.tell() > self.limits.inflated:
                        self._too_large(stream.tell())
                        break
                if number == 1 and before is None and line.startswith(BOM):
                    line = line[3:]
                if len(line) > cap:
                    yield from self._too_long(line, stream, line_in_file(number, before))
                    if stream.tell() > self.limits.inflated:
                        self._too_large(stream.tell())
                        break
                    continue
                try:
                    value = loads(line)
                except decode_error as error:
                    if line.strip():
                        at = line_in_file(number, before)
                        yield from self._not_json(line, f"{name}:{at}", at, error.msg)
                    continue
                # The common case, checked inline; anything unusual goes the careful way.
                if type(value) is dict:
                    kind, rid = value.get("resourceType"), value.get("id")
                    if type(kind) is str and type(rid) is str and rid and kind not in _NOT_PLAIN:
                        patient, foreign = patient_of(value, base)
                        yield RawResource(value, name, patient, number, foreign, None, before)
                        continue
                yield from self._resource_or_note(value, f"{name}:{line_in_file(number, before)}")
            progress(raw.tell() - done)

    def json(self, progress: Progress) -> Iterator[RawResource]:
        limit = self.limits.bundle
        if self.path.stat().st_size > limit and not self.name.lower().endswith(".gz"):
            progress(self.path.stat().st_size)
            self._too_large(self.path.stat().st_size, "bundle")
            return
        raw, stream = _open(self.path)
        with raw, stream:
            data = stream.read(limit + 1)
            progress(raw.tell())
        if len(data) > limit:
            self._too_large(len(data), "bundle")
            return
        if data.startswith(BOM):
            data = data[3:]
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            yield from self._not_json(data, self.name, None, error.msg)
            return
        yield from self._resource_or_note(value, self.name)

    # -- what cannot be read ------------------------------------------------------
    def _too_large(self, size: int, what: str = "inflated") -> None:
        limit = getattr(self.limits, what)
        option = "--max-bundle-mib" if what == "bundle" else "--max-inflated-mib"
        self.note(
            Note(
                "unreadable-file",
                f"the file {'is' if what == 'bundle' else 'inflates to'} more than "
                f"{limit / MIB:g} MiB ({option}); "
                + ("not read" if what == "bundle" else f"read only up to {size / MIB:.0f} MiB"),
                self.name,
            )
        )

    def _too_long(self, line: bytes, stream, number: int) -> Iterator[RawResource]:
        """Skip the rest of an over-long line in bounded pieces; name whose it was."""
        prefix = memoryview(line)[: self.limits.line]  # no copy: memory stays one line
        while not line.endswith(b"\n"):
            line = stream.readline(_CHUNK)
            if not line or stream.tell() > self.limits.inflated:
                break
        why = f"longer than {self.limits.line / MIB:g} MiB (--max-line-mib)"
        yield from self._unreadable(prefix, f"{self.name}:{number}", number, why, "line-too-long")

    def _not_json(
        self, data: bytes, where: str, number: int | None, error: str
    ) -> Iterator[RawResource]:
        """A line (or file) that is not JSON; if only its bytes are not UTF-8, read it with
        them replaced, as a record that cannot be read for certain."""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            try:
                value = orjson.loads(data.decode("utf-8", "replace"))
            except orjson.JSONDecodeError:
                value = None
            if value is not None:
                yield from self._replaced(value, where, number)
                return
            error = "not valid UTF-8"
        yield from self._unreadable(data, where, number, f"not JSON ({error})", "invalid-json")

    def _replaced(self, value: object, where: str, number: int | None) -> Iterator[RawResource]:
        place = f"line {number} of {self.name}" if number else self.name
        self.note(Note("invalid-utf8", "not valid UTF-8; read with its bad bytes replaced", where))
        for raw in self._resource_or_note(value, where):
            resource = raw.resource
            if "\ufffd" in _identity(resource):
                data = orjson.dumps(resource)
                why = "not valid UTF-8 where it says what it is or whose"
                yield from self._unreadable(data, raw.where, number, why, None)
                continue
            resource[DOUBT] = [f"{place} is not valid UTF-8 (bad bytes replaced)"]
            yield raw

    def _unreadable(
        self, data: bytes | memoryview, where: str, number: int | None, why: str, code: str | None
    ) -> Iterator[RawResource]:
        """A record that cannot be read: noted (``code``), and told to the pipeline once for
        each patient its bytes name, or once for nobody."""
        if number is None and where.startswith(f"{self.name}:"):
            number = int(where.rsplit(":", 1)[1])
        place = f"line {number} of {self.name}" if number else where
        names = named_patients(data)
        if code:
            whose = (
                f"names {', '.join(f'Patient/{n}' for n in names)}" if names else "names no patient"
            )
            self.note(Note(code, f"{why}; {whose}", where))
        reason = f"unreadable record on {place} ({why})"
        patients: list[str | None] = [*names] or [None]
        for patient in patients:
            yield RawResource({}, self.name, patient, number, unreadable=reason)

    # -- resources and Bundles ----------------------------------------------------
    def _resource_or_note(self, value: object, where: str) -> Iterator[RawResource]:
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            # JSON, but not a resource: it may have been one (a resourceType of the wrong
            # type, an object wrapped in a list), so it is unreadable, not ignorable.
            data = orjson.dumps(value, default=str)
            why = "JSON value has no resourceType"
            yield from self._unreadable(data, where, None, why, "not-a-resource")
            return
        if value["resourceType"] == "Bundle":
            yield from self._bundle_entries(value, where)
            return
        if value["resourceType"] == "OperationOutcome":
            self.note(
                Note(
                    "operation-outcome",
                    "an OperationOutcome (an error report) is not patient data",
                    where,
                )
            )
            return
        if not isinstance(value.get("id"), str) or not value["id"]:
            patient, foreign = patient_of(value, self.base)
            if value["resourceType"] == "Patient" or (patient is None and foreign is None):
                self.note(
                    Note("missing-id", f"{value['resourceType']} without an id is skipped", where)
                )
                return
            # It names its patient: read it under its place, as a record without an id.
            self.note(
                Note(
                    "missing-id",
                    f"{value['resourceType']} without an id; read as one that cannot be "
                    "read for certain",
                    where,
                )
            )
            value["id"] = where
            value[DOUBT] = [*value.get(DOUBT, []), "id is missing (FHIR requires it)"]
        patient, foreign = patient_of(value, self.base)
        yield RawResource(value, where, patient, None, foreign)

    def _bundle_entries(self, bundle: dict, where: str) -> Iterator[RawResource]:
        """Resources of a Bundle, with ``urn:uuid:`` references resolved inside it."""
        entries = bundle.get("entry")
        if entries is None:
            return
        if type(entries) is not list:
            data = orjson.dumps(entries, default=str)
            why = "Bundle.entry is not a JSON array"
            yield from self._unreadable(data, where, None, why, "not-a-resource")
            return
        readable = []
        for index, entry in enumerate(entries):
            if type(entry) is dict and type(entry.get("resource", {})) is dict:
                readable.append((index, entry))
            else:
                data = orjson.dumps(entry, default=str)
                why = "Bundle entry holds no resource object"
                place = f"{where}#entry[{index}]"
                yield from self._unreadable(data, place, None, why, "not-a-resource")
        for _, entry in readable:  # a transaction POST names its resource only by fullUrl
            resource, full_url = entry.get("resource"), entry.get("fullUrl")
            if (
                resource is not None
                and not resource.get("id")
                and isinstance(full_url, str)
                and full_url.startswith("urn:uuid:")
            ):
                entry["resource"] = {**resource, "id": full_url[9:]}
        local = {}
        for _, entry in readable:
            resource, full_url = entry.get("resource"), entry.get("fullUrl")
            if (
                resource is not None
                and isinstance(full_url, str)
                and isinstance(resource.get("id"), str)
            ):
                local[full_url] = f"{resource.get('resourceType')}/{resource['id']}"
        for index, entry in readable:
            resource = entry.get("resource")
            if resource is None:
                continue  # e.g. a transaction DELETE
            for key in _REFERENCE_FIELDS:
                target = resource.get(key)
                reference = target.get("reference") if isinstance(target, dict) else None
                if isinstance(reference, str) and reference in local:
                    resource[key] = {**target, "reference": local[reference]}
            yield from self._resource_or_note(resource, f"{where}#entry[{index}]")
