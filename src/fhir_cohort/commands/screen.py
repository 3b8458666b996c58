"""``fhir-cohort screen``: read, screen, compare with the last run, write, record.

Rule: one run holds the state's lock and the output folder's lock from start
to end. Several trials (``--trial a --trial b``, ``--trial all``) read the data
once; each writes its outputs in ``OUT/<trial>/`` and records its own run in the
one state (with one ``--trial`` the outputs stay in ``OUT/``). The outputs are
staged, renamed together, and the run recorded, and if recording fails the
renames are undone, so a failure anywhere (a full disk included) leaves the
previous outputs and history as they were. A run with partial input is
recorded as partial so it never becomes the baseline of the next diff or
incremental pull (a Bulk export is made the next ``_since`` baseline only once
its runs are recorded complete: ``BulkSource.settle``); records that are invalid
but read leave it complete.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path

from ..changes import Changes, compare
from ..criteria.language import Trial, check_site, load, load_site, queries_dir
from ..engines import engine
from ..errors import Exit
from ..listing import entries, snapshots
from ..outputs.candidates import csv_chunks, json_chunks
from ..outputs.group import build_group, group_json
from ..outputs.report import report_bytes
from ..outputs.terminal import problems, summary
from ..pipeline import Screening
from ..private_files import Content, locked_folder, write_private_files
from ..sources import ResourceSource, SourceError
from ..sources.files import MIB, FileLimits, FileSource, is_uri
from ..state import RunRecord, State, default_state_dir, utc_now
from ..transport.redact import shown
from .common import bundled_fixtures, progress_bars


def load_trials(names: list[str], site_file: Path | None = None) -> list[Trial]:
    """The trials asked for: names or paths, ``all`` for every trial in ``queries/``;
    with a site file's local codes in their value sets."""
    site, lines = load_site(site_file) if site_file else (None, {})
    if "all" in names:
        names = [*sorted(p.stem for p in queries_dir().glob("*.yaml")), *names]
    trials: dict[str, Trial] = {}
    for name in names:
        if name != "all":
            trial = load(name, site=site)
            trials.setdefault(trial.id, trial)
    if site_file:
        check_site(site_file, lines, list(trials.values()))
    return list(trials.values())


def _scope(args: argparse.Namespace) -> str:
    """What a run screened, so a run is compared with the previous run of the same data."""
    if args.server:
        mode = f"bulk-{args.bulk}" if args.bulk else "rest"
        return f"{mode}:{args.server.rstrip('/')}"
    paths = args.source or [bundled_fixtures()]
    return "files:" + "|".join(sorted(p if is_uri(p) else str(Path(p).resolve()) for p in paths))


def _sources(
    args: argparse.Namespace,
    trials: list[Trial],
    state: State | None,
    previous: RunRecord | None,
    scope: str,
) -> list[ResourceSource]:
    if not args.server:
        limits = FileLimits(
            line=args.max_line_mib * MIB,
            bundle=args.max_bundle_mib * MIB,
            inflated=args.max_inflated_mib * MIB,
        )
        return [FileSource(*(args.source or [bundled_fixtures()]), base=args.base, limits=limits)]
    from .server import server_sources  # the HTTP stack, only for a server

    return server_sources(args, trials, state, previous, scope)


def _attribute(sources: list[ResourceSource], name: str) -> str | None:
    """What the server source says for the next incremental run (None from files)."""
    for source in sources:
        value = getattr(source, name, None)
        if value is not None:
            return value() if callable(value) else value
    return None


def _write_outputs(
    screening: Screening,
    changes: Changes,
    group: dict,
    out: Path,
    record: Callable[[], object],
    compiled: Path | None,
) -> None:
    """Stage the outputs, rename them into place, then ``record`` the run (undone if it
    fails). Each file is made as it is written, so only one is in memory at a time, and
    that one in chunks."""
    files: dict[str, Content] = {
        "candidates.json": json_chunks(screening, changes),
        "candidates.csv": csv_chunks(screening, changes),
        "report.html": report_bytes(screening, changes, compiled),
        "group.json": group_json(group),
    }
    try:
        write_private_files(out, files, then=record)
    except OSError as error:
        raise SourceError(f"cannot write to {out}: {error.strerror or error}") from None


def _changes(
    state: State, trial: Trial, previous: RunRecord | None, current: Mapping[str, dict], as_of: date
) -> Changes:
    """This run against the previous complete one, with the review decisions on record."""
    return compare(
        state.snapshots_read_as_asked(previous.id) if previous else None,
        current,
        state.latest_reviews(trial.id),
        as_of,
        {"id": previous.id, "as_of": previous.as_of, "finished_at": previous.finished_at}
        if previous
        else None,
        trial.label,
    )


def _previous(state: State, trials: list[Trial], scope: str) -> RunRecord | None:
    """The previous complete run to build an incremental pull on: with several trials,
    only when each has one, with the same searches (the oldest checkpoint, every pool)."""
    runs = [state.previous_run(t.id, scope) for t in trials]
    if len(runs) == 1 or not all(runs):
        return runs[0] if len(runs) == 1 else None
    found = [r for r in runs if r is not None]
    if len({r.searches for r in found}) != 1 or not all(r.checkpoint for r in found):
        return None
    return min(found, key=lambda r: r.checkpoint or "")


def run(args: argparse.Namespace) -> int:
    trials = load_trials(args.trial or ["misle"], args.site)
    if args.publish_group and not args.server:
        raise SourceError("--publish-group needs --server")
    if args.base and args.server:
        raise SourceError(
            "--base is for files exported from a server; with --server it is that URL"
        )
    scope = _scope(args)
    if args.dry_run:
        for source in _sources(args, trials, None, None, scope):
            plan = getattr(source, "plan", None)
            print("\n".join(plan()) if plan else "nothing to plan: files are read as they are")
        return Exit.OK
    as_of = args.as_of or date.today()
    with (
        State(args.state or default_state_dir()) as state,
        state.lock(),
        locked_folder(args.out),
    ):
        previous = _previous(state, trials, scope)
        sources = _sources(args, trials, state, previous, scope)
        started = utc_now()
        chosen = engine(args.engine, args.workers, args.spark_master)
        results = chosen.screen(
            sources,
            trials,
            as_of,
            progress=None if args.quiet else progress_bars(),
            workdir=state.scratch(),
        )
        written = []
        for result in results:
            out = args.out / result.trial.id if len(trials) > 1 else args.out
            written.append(
                (result, out, *_write_trial(state, result, out, scope, started, sources))
            )
        missing = any(result.missing_data() for result in results)
        for source in sources:  # a Bulk export becomes the next baseline only if complete
            settle = getattr(source, "settle", None)
            if settle:
                settle(complete=not missing)
    pull = next((p for s in sources if (p := getattr(s, "pull", None))), None)
    for result, out, changes, group in written:
        if args.publish_group:
            from .server import server_client

            server_client(args).request(
                "PUT",
                f"Group/{group['id']}",
                kind="publish",
                data=group_json(group),
                headers={"Content-Type": "application/fhir+json"},
            )
        if not args.quiet:
            print(summary(result, str(out), changes, pull))
            if args.publish_group:
                print(
                    f"published Group/{group['id']} ({group['quantity']} members) to {args.server}"
                )
    for line in problems(results[0], pull):
        print(f"fhir-cohort: warning: {shown(line)}", file=sys.stderr)
    return Exit.PARTIAL if results[0].missing_data() else Exit.OK


def _write_trial(
    state: State,
    result: Screening,
    out: Path,
    scope: str,
    started: str,
    sources: list[ResourceSource],
) -> tuple[Changes, dict]:
    """One trial's outputs written into ``out`` and its run recorded (or neither)."""
    trial, as_of = result.trial, result.as_of
    previous = state.previous_run(trial.id, scope)
    current = snapshots(result.candidates)
    changes = _changes(state, trial, previous, current, as_of)
    group = build_group(result)
    missing = result.missing_data()

    def record() -> int:
        return state.record_run(
            trial=trial.id,
            scope=scope,
            as_of=as_of.isoformat(),
            started_at=started,
            outcome="partial" if missing else "complete",
            checkpoint=_attribute(sources, "checkpoint"),
            searches=_attribute(sources, "searches_fingerprint"),
            funnel=result.funnel.to_dict(),
            candidates=entries(result.candidates),
            pool=[p for s in sources for p in getattr(s, "pool", ())],
        )

    _write_outputs(result, changes, group, out, record, state.compiled_templates())
    return changes, group
