"""Bulk source: a FHIR Bulk Data ``$export``, downloaded, then read as files.

Kick-off (system, ``Patient`` or ``Group/<id>`` level) with ``_type`` set to
the types the trial reads, ``_typeFilter`` only when asked (servers differ in
how they read it), and ``_since`` for incremental runs; poll the status URL
(which must be on the server's own origin) honouring ``Retry-After`` and
showing ``X-Progress`` (control characters removed); download each output
file as it is listed, streamed to disk within the transport's caps (bytes per
file, inflation ratio), sending the access token only when the manifest says
``requiresAccessToken`` and only to the server's own origin. A file that needs
no token may live on a storage host, fetched without credentials and only
over https (plain http only on the host of a plain-http server: a local test
server); ``file:`` and other schemes never. A file the server redirects to
storage is fetched there by the same rule, the token left behind. Progress is kept in
``.bulk-state.json`` in the download folder (owner-only), so a run that dies
mid-download resumes without exporting again. Medications referenced by the
export but not in it (Patient- and Group-level exports often leave them out)
are fetched by id.

Polling is bounded by the client's ``max_wait`` (``--max-wait``): an export
still running after that long stops the run (exit 3) and the job stays in
``.bulk-state.json``, so the next run resumes it instead of exporting again; a
status URL that answers with an error drops the job (the next run starts a
new export). A manifest of the wrong shape is one line of explanation, never a
crash. Patient references are read with the server's base, so the server's
own absolute URLs are local and another server's are foreign.

Every run exports. The folder keeps a *baseline*, the whole export as of its
``transactionTime``; the next run asks only for what changed since
(``_since``) and merges it in, a changed resource replacing its copy. A
first run, a change of level or types, or ``incremental=False`` exports in
full and says why. ``_since`` cannot report deletions, so a deleted resource
stays in the baseline until the next full export (``--full``). The baseline
is then screened by :class:`FileSource`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import orjson

from ..private_files import write_private
from ..quality import Note
from ..transport.client import FhirClient, ServerError, retry_after
from ..transport.redact import shown
from ..transport.urls import Reach
from . import NoteSink, Progress, RawResource, SourceError, patient_of
from .files import FileSource
from .plan import ServerPlan

_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
STATE = ".bulk-state.json"  # hidden: the folder is read as data afterwards


class BadManifest(ServerError):
    """The export finished with a manifest the tool cannot read."""


@dataclass(frozen=True)
class Manifest:
    """What the tool reads of a Bulk export's manifest, checked for shape."""

    transaction_time: str | None
    requires_token: bool
    output: tuple[tuple[str, str], ...]  # (type, url) of each file
    errors: tuple[str, ...]  # the url of each error file

    @property
    def reach(self) -> Reach:
        """Where the files may be: the server itself when they need its token."""
        return Reach.SERVER if self.requires_token else Reach.STORAGE


def read_manifest(body: object) -> Manifest:
    """A manifest's parts; ServerError (one line) when its shape is not a manifest's.

    >>> read_manifest({"transactionTime": "2026-01-01T00:00:00Z", "requiresAccessToken": True,
    ...                "output": [{"type": "Patient", "url": "https://h/f/1"}]}).output
    (('Patient', 'https://h/f/1'),)
    >>> read_manifest({"output": "https://h/f/1"})
    Traceback (most recent call last):
    fhir_cohort.sources.bulk.BadManifest: the export's manifest is malformed: output is not a list
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
    for key in ("output", "error"):
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
    )


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


def _load_line(line: bytes) -> dict | None:
    """One NDJSON line as a JSON object (None: not one)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _type_and_id(line: bytes) -> tuple[str, str] | None:
    resource = _load_line(line)
    return (
        None if resource is None else (str(resource.get("resourceType")), str(resource.get("id")))
    )


def merge_export(baseline: Path, incoming: Path) -> int:
    """Fold a ``_since`` export into the baseline; a changed resource replaces its copy.

    Only baseline files of a type the delta holds are rewritten (each to a
    temporary file, then renamed); the delta's files then move into the
    baseline. Running it again after a crash gives the same baseline.
    Returns how many baseline copies were replaced.
    """
    baseline.mkdir(parents=True, exist_ok=True, mode=0o700)
    changed: dict[str, set[str]] = {}
    for path in sorted(incoming.glob("*.ndjson")):
        with path.open("rb") as stream:
            for line in stream:
                found = _type_and_id(line) if line.strip() else None
                if found:
                    changed.setdefault(found[0], set()).add(found[1])
    replaced = 0
    for path in sorted(baseline.glob("*.ndjson")):
        kind = path.name.split(".", 1)[0]  # files are named Type.stamp.index.ndjson
        if kind != "Resource" and kind not in changed:
            continue
        kept = []
        with path.open("rb") as stream:
            for line in stream:
                found = _type_and_id(line) if line.strip() else None
                if found and found[1] in changed.get(found[0], ()):
                    replaced += 1
                else:
                    kept.append(line)
        write_private(path, b"".join(kept))
    for path in sorted(incoming.glob("*.ndjson")):
        os.replace(path, baseline / path.name)
    shutil.rmtree(incoming, ignore_errors=True)
    return replaced


def replace_folder(baseline: Path, incoming: Path) -> None:
    """A full export becomes the baseline (idempotent: safe to repeat after a crash)."""
    if not incoming.exists():
        return  # already swapped in by a run that died just after
    old = baseline.with_name(baseline.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if baseline.exists():
        os.replace(baseline, old)
    os.replace(incoming, baseline)
    shutil.rmtree(old, ignore_errors=True)


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
    """Resources from a Bulk Data export of a live server, kept as a baseline between runs."""

    progress_unit = "files"

    def __init__(
        self,
        client: FhirClient,
        plan: ServerPlan,
        folder: Path,
        level: str = "system",
        incremental: bool = True,
        type_filter: bool = False,
        on_status: Callable[[str], None] = lambda _: None,
    ):
        self.client = client
        self.plan = plan
        self.folder = Path(folder)
        self.level = level
        self.incremental = incremental
        self.type_filter = type_filter
        self.on_status = on_status  # told the server's X-Progress while the export runs
        self.transaction_time: str | None = None
        self.pull = "full"  # or how the incremental pull went, in words
        self._files: FileSource | None = None

    @property
    def baseline(self) -> Path:
        """The merged export every run screens: complete as of ``transaction_time``."""
        return self.folder / "baseline"

    @property
    def incoming(self) -> Path:
        """Where the files of the export under way are downloaded."""
        return self.folder / "incoming"

    # -- state ---------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.folder / STATE

    def _load(self) -> dict:
        try:
            state = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save(self, state: dict) -> None:
        write_private(self._state_path(), orjson.dumps(state, option=orjson.OPT_INDENT_2))

    def types(self) -> list[str]:
        """The types the trial's server plan fetches, and the Medications they reference."""
        fetched = {s.resource for s in self.plan.fetch}
        return sorted(fetched | {"Patient", "Medication"})

    def _params(self, since: str | None) -> dict[str, str]:
        params = {"_type": ",".join(self.types()), "_outputFormat": "application/fhir+ndjson"}
        if since:
            params["_since"] = since_instant(since)
        if self.type_filter:
            codes = sorted(
                {
                    c
                    for s in self.plan.fetch
                    if s.resource == "Observation"
                    for vs in s.valuesets
                    for c in vs.codes
                }
            )
            if codes:
                params["_typeFilter"] = "Observation?code=" + ",".join(codes)
        return params

    # -- the export ----------------------------------------------------------
    def kick_off(self, params: dict[str, str]) -> str:
        path = kickoff_path(self.level) + "?" + urlencode(params, safe="|,?=")
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
        refused = self.client.transport.check(self.client.url(location), Reach.SERVER)
        if refused:
            raise ServerError(
                f"$export kick-off: the export's status URL (Content-Location) cannot be "
                f"used: {refused}; credentials go only to the server's own origin"
            )
        return location

    def poll(self, status_url: str) -> object:
        """The manifest (as sent), polling at most ``max_wait`` seconds in this run."""
        budget = self.client.max_wait
        started, waited = time.monotonic(), 0.0
        while True:
            response = self.client.request(
                "GET", status_url, kind="bulk-status", headers={"Accept": "application/json"}
            )
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise BadManifest("the export's manifest is not JSON") from None
            if response.headers.get("X-Progress"):
                self.on_status(f"export {shown(response.headers['X-Progress'], 80)}")
            elapsed = max(time.monotonic() - started, waited)
            if elapsed >= budget:
                raise ServerError(
                    f"the export is still running after {budget:.0f} s (--max-wait); "
                    "run again later to resume it (the job is kept)"
                )
            delay = retry_after(response.headers.get("Retry-After"))
            delay = min(max(2.0 if delay is None else delay, 0.5), budget - elapsed)
            self.client.pause(delay, "waiting for the export")
            waited += delay

    def download(self, manifest: Manifest, state: dict, progress: Progress) -> None:
        """Download the export's files into ``incoming``, recording each in ``state``."""
        job = state["job"]
        done = job.setdefault("downloaded", {})
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        for index, (listed, url) in enumerate(manifest.output):
            # the type becomes a file name: no paths
            kind = listed if _RESOURCE_TYPE.match(listed) else "Resource"
            if not url or url in done:
                progress(1)
                continue
            refused = self.client.transport.check(self.client.url(url), manifest.reach)
            if refused:
                raise ServerError(
                    f"the export's {kind} file cannot be fetched: {refused}"
                    + (
                        "; it needs the access token, which goes only to the server's own origin"
                        if manifest.requires_token
                        else "; files that need no token are fetched only over https"
                    )
                )
            target = self.incoming / f"{kind}.{job['stamp']}.{index:03d}.ndjson"
            partial = target.with_suffix(".part")
            self.client.request(
                "GET",
                url,
                kind="bulk-file",
                reach=manifest.reach,
                redirect_to=Reach.STORAGE,  # handed over to storage: without credentials
                into=partial,
                headers={"Accept": "application/fhir+ndjson"},
            )
            os.replace(partial, target)
            done[url] = target.name
            self._save(state)
            progress(1)

    def missing_medications(self, note: NoteSink) -> None:
        """Fetch Medications the exported records reference but the export left out."""
        have, wanted = set(), set()
        for path in self.baseline.glob("*.ndjson"):
            with path.open("rb") as stream:
                for line in stream:
                    resource = _load_line(line) if b"Medication" in line else None
                    if resource is None:
                        continue
                    if resource.get("resourceType") == "Medication":
                        have.add(resource.get("id"))
                    medication = resource.get("medicationReference")
                    reference = medication.get("reference") if isinstance(medication, dict) else ""
                    if isinstance(reference, str) and reference.startswith("Medication/"):
                        wanted.add(reference[len("Medication/") :])
        missing = sorted(wanted - have)
        if not missing:
            return
        lines = []
        for start in range(0, len(missing), 50):
            asked = missing[start : start + 50]
            for entry in self.client.search(
                "Medication", {"_id": ",".join(asked)}, kind="medications"
            ):
                resource = entry["resource"]
                if resource.get("resourceType") == "Medication" and resource.get("id") in asked:
                    lines.append(orjson.dumps(resource))
                else:
                    self.client.note(
                        "unrequested-resource",
                        "the server answered a search for Medications by id with a resource "
                        "not asked for; set aside, not screened",
                        "search Medication",
                    )
        write_private(self.baseline / "Medication.referenced.ndjson", b"\n".join(lines) + b"\n")

    def _start(self, state: dict) -> dict:
        """Kick off a new export: since the baseline when there is one to build on."""
        baseline = state.get("baseline") or {}
        since = None
        if not self.incremental:
            self.pull = "full (asked for with --full)"
        elif not baseline.get("transactionTime"):
            self.pull = "full (no earlier export in this folder to build on)"
        elif baseline.get("level") != self.level or baseline.get("params") != self._params(None):
            self.pull = "full (the earlier export was of another level, types or filter)"
        else:
            since = baseline["transactionTime"]
        params = self._params(since)
        job = {
            "level": self.level,
            "types": self.types(),
            "since": since,
            "params": params,
            "stamp": time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + secrets.token_hex(3),
            "status_url": self.kick_off(params),
        }
        state["job"] = job
        self._save(state)
        return job

    def _manifest(self, state: dict) -> Manifest:
        """The job's manifest, polled for unless already kept. A job whose status URL
        answers with an error, or whose manifest is malformed, is dropped, so the next
        run starts a new export instead of polling a dead one for ever."""
        job = state["job"]
        try:
            body = job.get("manifest") or self.poll(job["status_url"])
            manifest = read_manifest(body)
        except ServerError as error:
            if error.status is None and not isinstance(error, BadManifest):
                raise  # no answer, or still running: the next run resumes the job
            state.pop("job")
            self._save(state)
            raise ServerError(
                f"{error}; the export failed: the next run starts a new one", status=error.status
            ) from None
        job["manifest"] = body
        self._save(state)
        return manifest

    def export(self, note: NoteSink, progress: Progress) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self._load()
        job = state.get("job")
        if job and job.get("level") == self.level and job.get("types") == self.types():
            self.on_status("resuming the export under way")  # a run died before finishing it
        else:
            shutil.rmtree(self.incoming, ignore_errors=True)
            job = self._start(state)
        if job["since"]:
            self.pull = f"incremental: resources changed since {job['since']} (Bulk _since)"
        manifest = self._manifest(state)
        for url in manifest.errors:
            note(
                Note(
                    "export-error",
                    "the server listed an error file in the export",
                    shown(url, 200),
                )
            )
        self.download(manifest, state, progress)
        if job["since"]:
            merge_export(self.baseline, self.incoming)
        else:
            replace_folder(self.baseline, self.incoming)
        self.missing_medications(note)
        self.transaction_time = manifest.transaction_time
        self._save(
            {
                "baseline": {
                    "transactionTime": self.transaction_time,
                    "level": self.level,
                    "types": self.types(),
                    "params": self._params(None),
                }
            }
        )

    # -- ResourceSource ------------------------------------------------------
    def total_work(self) -> int | None:
        return None

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
        self.export(note, progress)
        self._files = FileSource(self.baseline)
        for raw in self._files.read(note, lambda _: None):
            if raw.foreign is not None:  # files know no base: the server's own URLs are local
                patient, foreign = patient_of(raw.resource, self.client.base)
                raw = dataclasses.replace(raw, patient=patient, foreign=foreign)
            yield raw
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
