"""File sources: Bulk Data NDJSON (``.ndjson``, ``.ndjson.gz``) and Bundle JSON.

A path may be a file or a folder (read recursively, in sorted order; hidden
files and an exporter's ``log.ndjson`` skipped). NDJSON is streamed line by
line; a ``.json`` file is one resource or one Bundle (searchset, collection,
transaction, batch, ...), whose ``urn:uuid:`` references are resolved to
``Type/id`` within the Bundle. A line
that is not JSON, or JSON that is not a resource, becomes a data-quality note
with its file and line, and reading goes on.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from ..quality import Note
from . import NoteSink, Progress, RawResource, SourceError, patient_of

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")
_REFERENCE_FIELDS = ("subject", "patient", "medicationReference")


EXPORT_LOGS = frozenset({"log.ndjson"})  # an exporter's own event log, not FHIR data


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return (
        not name.startswith(".")
        and name not in EXPORT_LOGS
        and name.endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)
    )


class FileSource:
    """Resources from files and folders of NDJSON and Bundle JSON."""

    def __init__(self, *paths: str | Path):
        self.files: list[Path] = []
        for raw in paths:
            path = Path(raw)
            if not path.exists():
                raise SourceError(f"source {path} does not exist")
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p))
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
        for path in self.files:
            try:
                if path.name.lower().endswith(NDJSON_SUFFIXES):
                    yield from _read_ndjson(path, note, progress)
                else:
                    yield from _read_json(path, note, progress)
            except (OSError, EOFError, zlib.error) as error:
                note(Note("unreadable-file", f"cannot read the file: {error}", str(path)))


def _open(path: Path):
    raw = path.open("rb")
    if path.name.lower().endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def _resource_or_note(value: object, where: str, note: NoteSink) -> Iterator[RawResource]:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        note(Note("not-a-resource", "JSON value has no resourceType", where))
        return
    if value["resourceType"] == "Bundle":
        yield from _bundle_entries(value, where, note)
        return
    if value["resourceType"] == "OperationOutcome":
        note(
            Note(
                "operation-outcome",
                "an OperationOutcome (an error report) is not patient data",
                where,
            )
        )
        return
    if not isinstance(value.get("id"), str) or not value["id"]:
        note(Note("missing-id", f"{value['resourceType']} without an id is skipped", where))
        return
    patient, foreign = patient_of(value)
    yield RawResource(value, where, patient, None, foreign)


_NOT_PLAIN = frozenset({"Bundle", "OperationOutcome"})


def _read_ndjson(path: Path, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
    raw, stream = _open(path)
    name = str(path)
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    done = 0
    with raw, stream:
        for number, line in enumerate(stream, start=1):
            if not number & 2047:
                position = raw.tell()
                progress(position - done)
                done = position
            try:
                value = loads(line)
            except decode_error as error:
                if line.strip():
                    note(
                        Note("invalid-json", f"line is not JSON ({error.msg})", f"{name}:{number}")
                    )
                continue
            # The common case, checked inline; anything unusual goes the careful way.
            if type(value) is dict:
                kind, rid = value.get("resourceType"), value.get("id")
                if type(kind) is str and type(rid) is str and rid and kind not in _NOT_PLAIN:
                    patient, foreign = patient_of(value)
                    yield RawResource(value, name, patient, number, foreign)
                    continue
            yield from _resource_or_note(value, f"{name}:{number}", note)
        progress(raw.tell() - done)


def _read_json(path: Path, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
    raw, stream = _open(path)
    with raw, stream:
        data = stream.read()
        progress(raw.tell())
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        note(Note("invalid-json", f"file is not JSON ({error.msg})", str(path)))
        return
    yield from _resource_or_note(value, str(path), note)


def _bundle_entries(bundle: dict, where: str, note: NoteSink) -> Iterator[RawResource]:
    """Resources of a Bundle, with ``urn:uuid:`` references resolved inside it."""
    entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
    for entry in entries:  # a transaction POST names its resource only by fullUrl
        resource, full_url = entry.get("resource"), entry.get("fullUrl")
        if (
            isinstance(resource, dict)
            and not resource.get("id")
            and isinstance(full_url, str)
            and full_url.startswith("urn:uuid:")
        ):
            entry["resource"] = {**resource, "id": full_url[9:]}
    local = {}
    for entry in entries:
        resource = entry.get("resource")
        full_url = entry.get("fullUrl")
        if isinstance(resource, dict) and isinstance(full_url, str) and resource.get("id"):
            local[full_url] = f"{resource.get('resourceType')}/{resource['id']}"
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if resource is None:
            continue  # e.g. a transaction DELETE
        for key in _REFERENCE_FIELDS:
            target = resource.get(key) if isinstance(resource, dict) else None
            if isinstance(target, dict) and target.get("reference") in local:
                resource[key] = {**target, "reference": local[target["reference"]]}
        yield from _resource_or_note(resource, f"{where}#entry[{index}]", note)
