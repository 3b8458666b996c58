"""Bulk source: a FHIR Bulk Data ``$export``, downloaded, then read as files.

Kick-off (system, ``Patient`` or ``Group/<id>`` level) with ``_type`` set to
the types the trial reads that the server offers (its CapabilityStatement's
resource list, when it has one), ``_typeFilter`` only when asked (servers
differ in how they read it), and ``_since`` for incremental runs. A kick-off
refused with a 400 that names some of the requested types is sent again
without them. A type the trial reads that the server does not offer or
refuses is ``missing-data`` (the run is partial, every candidate to review):
it could hold anyone's washout drug or exclusion. Medication is the exception:
it is only read through the records that reference it, each resolved below.

Poll the status URL (which must be on the server's own origin) honouring
``Retry-After`` (seconds or an HTTP date) and showing ``X-Progress``
(control characters removed), for at most the client's ``max_wait``
(``--max-wait``): an export still running after that long stops the run
(exit 3) and the job stays in ``.bulk-state.json``, so the next run resumes it
instead of exporting again; a status URL that answers with an error drops the
job (the next run starts a new export). A manifest of the wrong shape is one
line of explanation, never a crash.

Download each output file, streamed to disk within the transport's caps
(bytes per file, inflation ratio), sending the access token only when the
manifest says ``requiresAccessToken`` and only to the server's own origin. A
file that needs no token may live on a storage host, fetched without
credentials and only over https (plain http only on the host of a plain-http
server: a local test server); ``file:`` and other schemes never. A file the
server redirects to storage is fetched there by the same rule, the token left
behind. Error files are fetched and summarised (counts and first messages,
``export-error``: the run is partial); ``deleted`` Bundles are applied to the
baseline on incremental runs. Once everything is downloaded the status URL is
sent a ``DELETE`` so the server can drop the files (a refusal is only told).

The manifest is checked against the request: a full export that lists no
file at all is a failure (exit 3); a file holding fewer resources than its
manifest ``count`` is ``export-error``; a requested type absent from ``output`` is
confirmed with ``Type?_summary=count`` (with the type's ``_typeFilter`` codes
when one was sent): none on the server is fine, some (or no answer) is
``missing-data``. Servers leave types without data out of the manifest, so an
absent type is judged by the count, never assumed empty. At Group level the
count is of the exported members' records (typed ``patient=`` references, 50
a request); a server that ignores ``patient`` counts everyone's, erring on the
side of review. An incremental (``_since``) manifest lists only what changed,
and is not checked this way.

Medications referenced by the export but not in it (Patient- and Group-level
exports often leave them out) are searched by id, then read one by one where
the search is refused or leaves some out. One that cannot be had at all
(404) is ``missing-record``: the patients whose records reference it, and
only they, are needs-review (a washout it could start cannot be ruled out),
and the run is partial (exit 4). Patient references are read with the
server's base, so the server's own absolute URLs are local and another
server's are foreign.

The folder keeps a *baseline*: the export of the last complete run, as of its
``transactionTime``. An export under way is downloaded into ``incoming`` and
*staged* beside the baseline (``staged``: a full export as it is; a ``_since``
export merged into hard links of the baseline, a changed resource replacing
its copy, a deleted one dropped), and the staged folder is what the run
screens. Only when the run is recorded complete (:meth:`BulkSource.settle`)
does the staged folder become the baseline; a partial or failed run leaves
the previous baseline and its ``transactionTime`` untouched, so the next
``_since`` pull builds on a complete run, never on a failed one. A run that
dies after staging resumes by screening the staged export again. Progress is
kept in ``.bulk-state.json`` (owner-only), so a run that dies mid-download
resumes without exporting again. A first run, a change of level or types, or
``incremental=False`` exports in full and says why. The staged folder is read
by :class:`FileSource`.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import orjson

from ..private_files import write_private
from ..quality import Note
from ..transport.client import MAX_URL, FhirClient, ServerError, retry_after
from ..transport.redact import shown
from ..transport.urls import Reach
from . import NoteSink, Progress, RawResource, SourceError, patient_of, reference_to
from .bulk_files import (
    RESOURCE_TYPE,
    BadManifest,
    Manifest,
    deleted_resources,
    holds_data,
    link_folder,
    load_line,
    merge_export,
    named_types,
    offered_types,
    read_manifest,
    replace_folder,
    resources_in,
    summarise_errors,
)
from .files import FileSource
from .plan import ServerPlan

__all__ = ["STATE", "BadManifest", "BulkSource", "Manifest", "read_manifest"]

STATE = ".bulk-state.json"  # hidden: the folder is read as data afterwards
MEDICATION = "Medication"  # read only through the records that reference it
REFUSED_TYPE = frozenset({400, 422})  # a kick-off refusal that may name a type
MEDICATIONS_PER_SEARCH = 50  # ids (Medications, or patients counted) a request
GONE = frozenset({404, 410})  # a file the server no longer has: its export cannot resume


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
        self.server_plan = plan
        self.folder = Path(folder)
        self.level = level
        self.incremental = incremental
        self.type_filter = type_filter
        self.on_status = on_status  # told the server's X-Progress while the export runs
        self.transaction_time: str | None = None
        self.pull = "full"  # or how the incremental pull went, in words
        self._files: FileSource | None = None
        self._job: dict | None = None  # the export this run screens, once read

    @property
    def baseline(self) -> Path:
        """The export of the last complete run: complete as of its ``transactionTime``."""
        return self.folder / "baseline"

    @property
    def incoming(self) -> Path:
        """Where the files of the export under way are downloaded."""
        return self.folder / "incoming"

    @property
    def staged(self) -> Path:
        """The export under way, merged into the baseline: what this run screens."""
        return self.folder / "staged"

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
        fetched = {s.resource for s in self.server_plan.fetch}
        return sorted(fetched | {"Patient", MEDICATION})

    def _filters(self) -> dict[str, dict[str, str]]:
        """The search each ``_typeFilter`` narrows a type to (only with ``type_filter``)."""
        if not self.type_filter:
            return {}
        codes = sorted(
            {
                c
                for s in self.server_plan.fetch
                if s.resource == "Observation"
                for vs in s.valuesets
                for c in vs.codes
            }
        )
        return {"Observation": {"code": ",".join(codes)}} if codes else {}

    def _params(self, since: str | None, types: list[str] | None = None) -> dict[str, str]:
        types = self.types() if types is None else types
        params = {"_type": ",".join(types), "_outputFormat": "application/fhir+ndjson"}
        if since:
            params["_since"] = since_instant(since)
        filters = [  # the query as servers read it, encoded once with the kick-off's
            f"{kind}?" + "&".join(f"{k}={v}" for k, v in query.items())
            for kind, query in self._filters().items()
            if kind in types
        ]
        if filters:
            params["_typeFilter"] = ",".join(filters)
        return params

    def plan(self) -> list[str]:
        """What a screen would ask of the server, in words (no request is sent)."""
        baseline = (self._load().get("baseline") or {}).get("transactionTime")
        since = baseline if self.incremental and baseline else None
        query = urlencode(self._params(since), safe="|,?=:/")
        return [
            f"server {self.client.base}",
            "1. read the CapabilityStatement (GET metadata): a type it does not list is left "
            "out of _type (missing-data, except Medication)",
            f"2. kick off a Bulk export: GET {kickoff_path(self.level)}?{shown(query, 300)}"
            + ("" if since else " (in full: no complete export in this folder to build on)"),
            "   a 400 naming some of the types: sent again without them (missing-data)",
            f"3. poll the status URL as Retry-After asks, for at most {self.client.max_wait:.0f} "
            "s (--max-wait); the job is resumed by the next run after that",
            "4. download each file, summarise the error files (export-error), apply the "
            "deleted Bundles, then DELETE the status URL",
            "5. a requested type missing from a full export's manifest: Type?_summary=count "
            "(the server holds some: missing-data)",
            f"6. Medications referenced but not exported: Medication?_id=a,b,c "
            f"({MEDICATIONS_PER_SEARCH} a request), then Medication/<id>; one that cannot be "
            "had puts the patients referencing it to review (missing-record)",
        ]

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

    def _offered(self) -> frozenset[str] | None:
        """The types the server's CapabilityStatement lists (None: it does not say)."""
        try:
            return offered_types(self.client.capabilities())
        except ServerError:
            return None  # no statement: the kick-off's own answer will tell

    def _kick_off_types(self, since: str | None) -> tuple[dict[str, str], str, dict[str, str]]:
        """Kick off with the types the server can give: the params sent, the status URL,
        and each type left out with why."""
        asked = self.types()
        offered = self._offered()
        omitted = {
            t: "the server's CapabilityStatement does not list it"
            for t in asked
            if offered is not None and t not in offered
        }
        while True:
            sending = [t for t in asked if t not in omitted]
            params = self._params(since, sending)
            try:
                return params, self.kick_off(params), omitted
            except ServerError as error:
                refused = named_types(str(error), sending) if error.status in REFUSED_TYPE else []
                if not refused:
                    raise
                for kind in refused:
                    omitted[kind] = f"the server refused it at kick-off ({shown(str(error), 200)})"

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

    def _fetch(self, manifest: Manifest, url: str, target: Path, what: str) -> None:
        """One file of the export into ``target`` (atomically), by the manifest's reach."""
        refused = self.client.transport.check(self.client.url(url), manifest.reach)
        if refused:
            raise ServerError(
                f"the export's {what} cannot be fetched: {refused}"
                + (
                    "; it needs the access token, which goes only to the server's own origin"
                    if manifest.requires_token
                    else "; files that need no token are fetched only over https"
                )
            )
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        partial.replace(target)

    def download(self, manifest: Manifest, state: dict, progress: Progress) -> None:
        """Download the export's files into ``incoming``, recording each in ``state``."""
        job = state["job"]
        done = job.setdefault("downloaded", {})
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        for index, (listed, url) in enumerate(manifest.output):
            # the type becomes a file name: no paths
            kind = listed if RESOURCE_TYPE.match(listed) else "Resource"
            if not url or (url in done and (self.incoming / done[url]).is_file()):
                progress(1)
                continue
            target = self.incoming / f"{kind}.{job['stamp']}.{index:03d}.ndjson"
            self._fetch(manifest, url, target, f"{kind} file")
            done[url] = target.name
            self._save(state)
            progress(1)

    def _side_files(self, manifest: Manifest, job: dict) -> None:
        """Fetch the error files (summarised into the job's problems) and the ``deleted``
        Bundles (into the job's deletions); a file that cannot be had is a problem."""
        if "deleted" in job:
            return
        side = self.folder / "side"
        deleted: set[tuple[str, str]] = set()
        for index, url in enumerate(manifest.errors):
            where = f"bulk export error file {index + 1} of {len(manifest.errors)}"
            try:
                self._fetch(manifest, url, side / f"error.{index:03d}.ndjson", "error file")
            except ServerError as error:
                message = f"the export listed an error file that cannot be fetched: {error}"
                job["problems"].append(["export-error", message, where])
                continue
            summary = summarise_errors(side / f"error.{index:03d}.ndjson")
            if summary.errors:
                message = f"the export's error file lists {summary.errors} errors, first: "
                job["problems"].append(
                    ["export-error", message + "; ".join(summary.first_errors), where]
                )
            if summary.notices:
                message = f"the export's error file lists {summary.notices} warnings, first: "
                job["problems"].append(
                    ["server-warning", message + "; ".join(summary.first_notices), where]
                )
        for index, url in enumerate(manifest.deleted):
            try:
                self._fetch(manifest, url, side / f"deleted.{index:03d}.json", "deleted file")
                named, unreadable = deleted_resources(side / f"deleted.{index:03d}.json")
                deleted |= named
                why = f"{unreadable} of its lines are not a Bundle" if unreadable else ""
            except ServerError as error:
                why = f"it cannot be fetched ({error})"
            if why:
                job["problems"].append(
                    [
                        "export-error",
                        "the export lists resources deleted since the last run in a file that "
                        f"cannot all be read: {why}; they may still be screened",
                        f"bulk export deleted file {index + 1}",
                    ]
                )
        shutil.rmtree(side, ignore_errors=True)
        job["deleted"] = sorted(deleted)

    def _release(self, job: dict) -> None:
        """``DELETE`` the status URL: the server may drop the files (a refusal is told)."""
        if job.get("released"):
            return
        try:
            self.client.request("DELETE", job["status_url"], kind="bulk-delete")
        except ServerError as error:
            self.on_status(f"the server did not release the export's files: {error}")
        job["released"] = True

    def _check_manifest(self, manifest: Manifest, job: dict) -> None:
        """The export against the request: a file shorter than its ``count``; a requested
        type missing from a full export's manifest, counted on the server (for a Group,
        among the exported members): a problem unless it holds none."""
        if job.get("checked"):
            return
        job["checked"] = True
        self._short_files(manifest, job)
        if job["since"]:
            return  # a _since manifest lists only the types that changed
        listed = {kind for kind, _ in manifest.output}
        members = self._members() if self.level.startswith("group:") else None
        for kind in job["params"]["_type"].split(","):
            if kind in listed or kind == MEDICATION:
                continue
            among = members if members and kind != "Patient" else None
            held = self._count(kind, among)
            if held == 0:
                continue
            filtered = " (with the same _typeFilter)" if kind in self._filters() else ""
            whose = f" for the group's {len(among)} members" if among else ""
            said = (
                f"the server holds {held}{whose}{filtered}"
                if held is not None
                else "the server cannot say how many it holds"
            )
            job["problems"].append(
                [
                    "missing-data",
                    f"{kind} was requested but the export listed no {kind} file, and {said}: "
                    f"{kind} records may be missing",
                    "bulk export manifest",
                ]
            )

    def _short_files(self, manifest: Manifest, job: dict) -> None:
        """A file holding fewer resources than the manifest's ``count`` says is a problem."""
        for (kind, url), said in zip(manifest.output, manifest.counts, strict=False):
            name = job["downloaded"].get(url)
            if said is None or name is None:
                continue
            held = resources_in(self.incoming / name)
            if held < said:
                job["problems"].append(
                    [
                        "export-error",
                        f"the export's {shown(kind, 40)} file holds {held} resources where the "
                        f"manifest says {said}: records may be missing",
                        "bulk export manifest",
                    ]
                )

    def _members(self) -> list[str]:
        """The ids of the Patients the export under way holds (a Group's members)."""
        found = []
        for path in sorted(self.incoming.glob("Patient.*.ndjson")):
            with path.open("rb") as stream:
                for line in stream:
                    resource = load_line(line)
                    if resource and isinstance(resource.get("id"), str):
                        found.append(resource["id"])
        return found

    def _count(self, kind: str, patients: list[str] | None = None) -> int | None:
        """How many resources of ``kind`` (narrowed as its ``_typeFilter``, and to
        ``patients`` when given, as typed references 50 at a time) the server holds, by
        ``_summary=count`` (None: it cannot say)."""
        if patients:
            counts = [
                self._count_one(kind, {"patient": ",".join(f"Patient/{p}" for p in chunk)})
                for chunk in (
                    patients[i : i + MEDICATIONS_PER_SEARCH]
                    for i in range(0, len(patients), MEDICATIONS_PER_SEARCH)
                )
            ]
            return None if None in counts else sum(c for c in counts if c is not None)
        return self._count_one(kind, {})

    def _count_one(self, kind: str, narrowed: dict[str, str]) -> int | None:
        params = {**self._filters().get(kind, {}), **narrowed, "_summary": "count"}
        query = urlencode(params, safe="|,/")
        try:
            if len(self.client.url(f"{kind}?{query}")) > MAX_URL:
                body = self.client.json(
                    "POST",
                    f"{kind}/_search",
                    data=params,
                    kind="bulk-check",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            else:
                body = self.client.json("GET", f"{kind}?{query}", kind="bulk-check")
        except ServerError:
            return None
        total = body.get("total") if body.get("resourceType") == "Bundle" else None
        return total if type(total) is int and total >= 0 else None

    def _medications(self, job: dict) -> None:
        """Fetch Medications the staged records reference but the export left out; one that
        cannot be had is a problem, and a doubt on each patient whose records reference it."""
        have: set[str] = set()
        wanted: dict[str, set[str]] = {}
        for path in sorted(self.staged.glob("*.ndjson")):
            with path.open("rb") as stream:
                for line in stream:
                    resource = load_line(line) if b"Medication" in line else None
                    if resource is None:
                        continue
                    if resource.get("resourceType") == MEDICATION:
                        have.add(str(resource.get("id")))
                    medication = resource.get("medicationReference")
                    reference = medication.get("reference") if isinstance(medication, dict) else ""
                    local, _ = reference_to(reference, MEDICATION, self.client.base)
                    if local:
                        patient, _ = patient_of(resource, self.client.base)
                        wanted.setdefault(local, set()).update([patient] if patient else [])
        missing = sorted(set(wanted) - have)
        found, unresolved = self._resolve(missing)
        if found:
            lines = b"".join(orjson.dumps(found[m]) + b"\n" for m in sorted(found))
            write_private(self.staged / "Medication.referenced.ndjson", lines)
        job["unresolved"] = sorted(unresolved)
        for medication, why in sorted(unresolved.items()):
            patients = sorted(wanted[medication])
            job["problems"].append(
                [
                    "missing-record",
                    f"Medication/{medication} is referenced by the medication records of "
                    f"{len(patients)} patient(s) but is neither in the export nor readable "
                    f"from the server ({why}); those patients are needs-review",
                    f"bulk Medication/{medication}",
                ]
            )
            job["doubts"] += [
                [
                    patient,
                    f"Medication/{medication}, which this patient's medication records "
                    f"reference, could not be had ({why}): the drug is unknown, so a washout "
                    "it could start cannot be ruled out",
                ]
                for patient in patients
            ]

    def _resolve(self, missing: list[str]) -> tuple[dict[str, dict], dict[str, str]]:
        """Medications by id: searched 50 at a time, then read one by one where the search is
        refused or leaves some out. Returns those found, and why each other one was not."""
        found: dict[str, dict] = {}
        searchable = True
        for start in range(0, len(missing), MEDICATIONS_PER_SEARCH):
            asked = missing[start : start + MEDICATIONS_PER_SEARCH]
            if not searchable:
                break
            try:
                for entry in self.client.search(
                    MEDICATION, {"_id": ",".join(asked)}, kind="medications"
                ):
                    resource = entry["resource"]
                    if resource.get("resourceType") == MEDICATION and resource.get("id") in asked:
                        found[resource["id"]] = resource
                    else:
                        self.client.note(
                            "unrequested-resource",
                            "the server answered a search for Medications by id with a "
                            "resource not asked for; set aside, not screened",
                            "search Medication",
                        )
            except ServerError as error:
                if error.status is None:
                    raise  # no answer: the run stops, the job is resumed
                searchable = False  # refused: read each by id instead
        unresolved: dict[str, str] = {}
        for medication in (m for m in missing if m not in found):
            try:
                resource = self.client.json("GET", f"{MEDICATION}/{medication}", kind="medications")
            except ServerError as error:
                if error.status is None:
                    raise
                unresolved[medication] = f"HTTP {error.status} reading Medication/{medication}"
                continue
            if resource.get("resourceType") == MEDICATION and resource.get("id") == medication:
                found[medication] = resource
            else:
                unresolved[medication] = "the server answered with another resource"
        return found, unresolved

    def _start(self, state: dict) -> dict:
        """Kick off a new export: since the baseline when there is one to build on."""
        baseline = state.get("baseline") or {}
        since = None
        if not self.incremental:
            self.pull = "full (asked for with --full)"
        elif not baseline.get("transactionTime"):
            self.pull = "full (no earlier export in this folder to build on)"
        elif not holds_data(self.baseline):
            self.pull = "full (the earlier export's files are gone from this folder)"
        elif baseline.get("level") != self.level or baseline.get("params") != self._params(None):
            self.pull = "full (the earlier export was of another level, types or filter)"
        else:
            since = baseline["transactionTime"]
        for folder in (self.incoming, self.staged):
            shutil.rmtree(folder, ignore_errors=True)
        params, location, omitted = self._kick_off_types(since)
        job = {
            "level": self.level,
            "types": self.types(),
            "since": since,
            "params": params,
            "stamp": time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + secrets.token_hex(3),
            "status_url": location,
            "omitted": omitted,
            "problems": [
                [
                    "missing-data",
                    f"{kind} records could not be exported: {why}; they may hold any "
                    "candidate's exclusion or washout",
                    "bulk export _type",
                ]
                for kind, why in omitted.items()
                if kind != MEDICATION
            ],
            "doubts": [],
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
            self._drop(state)
            raise ServerError(
                f"{error}; the export failed: the next run starts a new one", status=error.status
            ) from None
        job["manifest"] = body
        self._save(state)
        return manifest

    def _drop(self, state: dict) -> None:
        """Forget the job under way and its files; the baseline stays as it was."""
        state.pop("job", None)
        self._save(state)
        for folder in (self.incoming, self.staged, self.folder / "side"):
            shutil.rmtree(folder, ignore_errors=True)

    def _stage(self, job: dict) -> None:
        """Build ``staged``: the full export, or the baseline with the ``_since`` export
        merged in and its deletions applied. The baseline itself is not touched."""
        if job["since"]:
            link_folder(self.baseline, self.staged)
            deleted = {(kind, rid) for kind, rid in job["deleted"]}
            merge_export(self.staged, self.incoming, deleted)
        else:
            link_folder(self.incoming, self.staged)

    def export(self, note: NoteSink, progress: Progress) -> None:
        """Export (or resume the export under way) and stage it for this run to screen."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self._load()
        job = state.get("job")
        if (
            job
            and job.get("level") == self.level
            and job.get("types") == self.types()
            and (not job.get("ready") or holds_data(self.staged))
        ):
            self.on_status("resuming the export under way")  # a run died before finishing it
            job.setdefault("problems", [])  # a job kept by an earlier version
            job.setdefault("doubts", [])
        else:
            job = self._start(state)
        if job["since"]:
            self.pull = f"incremental: resources changed since {job['since']} (Bulk _since)"
        manifest = self._manifest(state)
        if not job.get("ready"):
            if not job["since"] and not manifest.output:
                self._drop(state)
                raise ServerError(
                    "the export finished listing no files: the server exported nothing to "
                    "screen; the previous baseline is kept, and the next run starts a new export"
                )
            try:
                self.download(manifest, state, progress)
            except ServerError as error:
                if error.status not in GONE:
                    raise  # no answer, or refused for now: the next run resumes the job
                self._drop(state)
                raise ServerError(
                    f"{error}; the export's files are gone: the next run starts a new export",
                    status=error.status,
                ) from None
            self._side_files(manifest, job)
            self._release(job)
            self._check_manifest(manifest, job)
            self._save(state)  # what the server has been told and answered is kept
            self._stage(job)
            if not holds_data(self.staged):
                self._drop(state)
                raise ServerError(
                    "the export's files hold no resources: nothing to screen; the previous "
                    "baseline is kept, and the next run starts a new export"
                )
            self._medications(job)
            job["ready"] = True
            self._save(state)
        else:
            progress(len(manifest.output))
        self.transaction_time = manifest.transaction_time

    def settle(self, complete: bool) -> None:
        """After the run is recorded: a complete run's staged export becomes the baseline
        the next ``_since`` builds on; a partial run's is dropped (the baseline stays)."""
        state = self._load()
        job = state.get("job")
        if not job or not job.get("ready"):
            return
        if complete:
            replace_folder(self.baseline, self.staged)
            state["baseline"] = {
                "transactionTime": read_manifest(job["manifest"]).transaction_time,
                "level": self.level,
                "types": self.types(),
                "params": self._params(None),
            }
        self._drop(state)

    # -- ResourceSource ------------------------------------------------------
    def total_work(self) -> int | None:
        return None

    def retrieval_plan(self) -> dict:
        """How this export was asked for and what it left out (for candidates.json)."""
        job = self._job or {}
        return {
            "bulk": self.level,
            "pull": self.pull,
            "types": job.get("params", {}).get("_type", "").split(","),
            "left_out": job.get("omitted", {}),
            "type_filter": "_typeFilter" in job.get("params", {}),
            "since": job.get("since"),
            "transaction_time": self.transaction_time,
            "medications_not_found": job.get("unresolved", []),
        }

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
        self.export(note, progress)
        job = self._job = self._load()["job"]
        self._files = FileSource(self.staged)
        for raw in self._files.read(note, lambda _: None):
            if raw.foreign is not None:  # files know no base: the server's own URLs are local
                patient, foreign = patient_of(raw.resource, self.client.base)
                raw = raw._replace(patient=patient, foreign=foreign)
            yield raw
        for patient, why in job["doubts"]:
            yield RawResource({}, "bulk export", patient, unreadable=why)
        for code, message, where in job["problems"]:
            note(Note(code, message, where))
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
