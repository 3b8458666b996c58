"""Bulk source: a FHIR Bulk Data ``$export``, downloaded, then read as files.

Kick-off (system, ``Patient`` or ``Group/<id>`` level) with ``_type`` set to
the types the trial reads, ``_typeFilter`` only when asked (servers differ in
how they read it), and ``_since`` for incremental runs; poll the status URL
honouring ``Retry-After`` and showing ``X-Progress``; download each output
file as it is listed, sending the access token only when the manifest says
``requiresAccessToken`` and only to the server's own origin. Progress is kept
in ``.bulk-state.json`` in the download folder (owner-only), so a run that dies
mid-download resumes without exporting again. Medications referenced by the
export but not in it (Patient- and Group-level exports often leave them out)
are fetched by id. The folder is then screened by :class:`FileSource`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import orjson

from ..criteria.trial import Trial
from ..normalise.facts import Note
from ..outputs import write_private
from ..server.client import FhirClient, ServerError
from . import NoteSink, Progress, RawResource, SourceError
from .files import FileSource

_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
STATE = ".bulk-state.json"  # hidden: the folder is read as data afterwards


def kickoff_path(level: str) -> str:
    """``system``, ``patient`` or ``group:<id>`` -> the $export path.

    >>> kickoff_path("system"), kickoff_path("patient"), kickoff_path("group:g1")
    ('$export', 'Patient/$export', 'Group/g1/$export')
    """
    if level == "system":
        return "$export"
    if level == "patient":
        return "Patient/$export"
    if level.startswith("group:") and level[6:]:
        return f"Group/{level[6:]}/$export"
    raise ServerError(f"--bulk must be system, patient or group:<id>, not {level!r}")


def since_instant(text: str) -> str:
    """``_since`` as a UTC instant with milliseconds, the form every server compares right.

    >>> since_instant("2026-11-24T01:30:00+02:00"), since_instant("2026-11-24")
    ('2026-11-23T23:30:00.000Z', '2026-11-24T00:00:00.000Z')
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(f"--since must be an ISO date or instant, not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class BulkSource:
    """Resources from a Bulk Data export of a live server."""

    progress_unit = "files"

    def __init__(
        self,
        client: FhirClient,
        trial: Trial,
        folder: Path,
        level: str = "system",
        since: str | None = None,
        type_filter: bool = False,
        max_poll: float = 3600,
        on_status: Callable[[str], None] = lambda _: None,
    ):
        self.client = client
        self.trial = trial
        self.folder = Path(folder)
        self.level = level
        self.since = since_instant(since) if since else None
        self.type_filter = type_filter
        self.max_poll = max_poll
        self.on_status = on_status  # told the server's X-Progress while the export runs
        self.transaction_time: str | None = None
        self._files: FileSource | None = None

    # -- state ---------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.folder / STATE

    def _load(self) -> dict:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        write_private(self._state_path(), orjson.dumps(state, option=orjson.OPT_INDENT_2))

    def types(self) -> list[str]:
        """The types the trial's server plan fetches, and the Medications they reference."""
        plan = self.trial.server
        fetched = {s.resource for s in plan.fetch} if plan else set()
        return sorted(fetched | {"Patient", "Medication"})

    def _params(self) -> dict[str, str]:
        params = {"_type": ",".join(self.types()), "_outputFormat": "application/fhir+ndjson"}
        if self.since:
            params["_since"] = self.since
        if self.type_filter and self.trial.server:
            codes = sorted(
                {
                    c
                    for s in self.trial.server.fetch
                    if s.resource == "Observation"
                    for vs in s.valuesets
                    for c in vs.codes
                }
            )
            if codes:
                params["_typeFilter"] = "Observation?code=" + ",".join(codes)
        return params

    # -- the export ----------------------------------------------------------
    def kick_off(self) -> str:
        path = kickoff_path(self.level) + "?" + urlencode(self._params(), safe="|,?=")
        response = self.client.request(
            "GET",
            path,
            kind="bulk-kickoff",
            headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
        )
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise ServerError(
                f"$export kick-off answered {response.status_code} without a "
                "Content-Location: the server did not start an export"
            )
        return location

    def poll(self, status_url: str) -> dict:
        started = time.monotonic()
        while True:
            response = self.client.request(
                "GET", status_url, kind="bulk-status", headers={"Accept": "application/json"}
            )
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise ServerError("the export's manifest is not JSON") from None
            if response.headers.get("X-Progress"):
                self.on_status(f"export {response.headers['X-Progress'][:80]}")
            if time.monotonic() - started > self.max_poll:
                raise ServerError(
                    f"the export did not finish within {self.max_poll:.0f} s; "
                    "run again later to resume it"
                )
            wait = response.headers.get("Retry-After", "")
            delay = float(wait) if wait.strip().isdigit() else 2.0
            self.client.sleep(min(max(delay, 0.5), self.client.max_wait))

    def download(self, manifest: dict, state: dict, progress: Progress) -> None:
        with_token = bool(manifest.get("requiresAccessToken"))
        done = state.setdefault("downloaded", {})
        for index, item in enumerate(manifest.get("output") or ()):
            url, kind = item.get("url"), str(item.get("type", ""))
            if not _RESOURCE_TYPE.match(kind):  # the name becomes a file name: no paths
                kind = "Resource"
            if not url or url in done:
                progress(1)
                continue
            if with_token and not self.client.same_origin(url):
                raise ServerError(
                    f"the export's file {kind} lives on another host and needs the "
                    "access token; refusing to send credentials there"
                )
            target = self.folder / f"{kind}.{index:03d}.ndjson"
            partial = target.with_suffix(".part")
            response = self.client.request(
                "GET",
                url,
                kind="bulk-file",
                stream=True,
                send_auth=with_token,
                headers={"Accept": "application/fhir+ndjson"},
            )
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                for block in response.iter_content(chunk_size=1 << 20):
                    stream.write(block)
            os.replace(partial, target)
            done[url] = target.name
            self._save(state)
            progress(1)

    def missing_medications(self, note: NoteSink) -> None:
        """Fetch Medications the exported records reference but the export left out."""
        have, wanted = set(), set()
        for path in self.folder.glob("*.ndjson"):
            with path.open("rb") as stream:
                for line in stream:
                    if b"Medication" not in line:
                        continue
                    try:
                        resource = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if resource.get("resourceType") == "Medication":
                        have.add(resource.get("id"))
                    reference = (resource.get("medicationReference") or {}).get("reference", "")
                    if reference.startswith("Medication/"):
                        wanted.add(reference[len("Medication/") :])
        missing = sorted(wanted - have)
        if not missing:
            return
        lines = []
        for start in range(0, len(missing), 50):
            ids = ",".join(missing[start : start + 50])
            for entry in self.client.search("Medication", {"_id": ids}, kind="medications"):
                lines.append(orjson.dumps(entry["resource"]))
        write_private(self.folder / "Medication.referenced.ndjson", b"\n".join(lines) + b"\n")

    def export(self, note: NoteSink, progress: Progress) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self._load()
        if state.get("complete"):
            self.transaction_time = state.get("transactionTime")
            return
        if (
            state.get("status_url")
            and state.get("params") == self._params()
            and state.get("level") == self.level
        ):
            status_url = state["status_url"]  # resume: the export is already under way
        else:
            status_url = self.kick_off()
            state = {"level": self.level, "params": self._params(), "status_url": status_url}
            self._save(state)
        manifest = state.get("manifest") or self.poll(status_url)
        state["manifest"] = manifest
        self._save(state)
        for problem in manifest.get("error") or ():
            note(
                Note(
                    "export-error",
                    "the server listed an error file in the export",
                    str(problem.get("url")),
                )
            )
        self.download(manifest, state, progress)
        self.missing_medications(note)
        state["complete"] = True
        state["transactionTime"] = self.transaction_time = manifest.get("transactionTime")
        self._save(state)

    # -- ResourceSource ------------------------------------------------------
    def total_work(self) -> int | None:
        return None

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
        self.export(note, progress)
        self._files = FileSource(self.folder)
        yield from self._files.read(note, lambda _: None)
        for server_note in self.client.notes:
            note(Note(server_note.code, server_note.message, server_note.where))

    def patients_not_read(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        counter = self.client.counter
        return {
            "http_requests": counter.total,
            "http_retries": counter.retries,
            "files": len(self._files.files) if self._files else 0,
        }
