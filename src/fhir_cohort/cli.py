"""Command line: ``fhir-cohort screen`` and friends.

Rule: the command line parses arguments, turns unusable input into one-line
errors with a documented exit code, draws progress on stderr and prints the
summary on stdout; all the work is in :mod:`fhir_cohort.pipeline`.

Exit codes: 0 done; 2 unusable input (missing path, unknown trial, bad date,
bad trial definition, bad authentication settings, unusable state folder);
3 the server failed (no answer, refused, throttled past --max-wait); 4 done
with partial data (a file could not be read, an export listed errors, a
server search was cut short: the outputs are written and say what is
missing); 5 another run holds the state's lock; 1 an unexpected failure (a
bug: please report it). Secrets come from environment variables or files
only.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from fhir.resources.R4B.group import Group
from tqdm import tqdm

from . import __version__
from .changes import REVIEW_STATUSES, Changes, compare, snapshot
from .criteria.trial import Trial, TrialError, load_trial, queries_dir
from .outputs import write_private_files
from .outputs.candidates import candidate_dict, csv_bytes, json_bytes
from .outputs.group import build_group, group_json
from .outputs.report import render
from .outputs.terminal import problems, review_lines, summary
from .pipeline import Screening, screen
from .server.auth import (
    Auth,
    AuthError,
    BasicAuth,
    BearerAuth,
    NoAuth,
    SmartBackendAuth,
    load_private_key,
    read_secret,
)
from .server.client import FhirClient, ServerError
from .server.probe import probe
from .server.seed import seed
from .sources import ResourceSource, SourceError
from .sources.bulk import BulkSource
from .sources.files import FileSource
from .sources.rest import RestSource
from .state import RunRecord, State, StateError, StateLocked, default_state_dir, utc_now

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_SERVER, EXIT_PARTIAL, EXIT_LOCKED = 0, 1, 2, 3, 4, 5


def bundled_fixtures() -> Path:
    """The synthetic MiSLE cohort shipped with fhir-cohort (the default source)."""
    return queries_dir().parent / "fixtures" / "misle-cohort"


def _as_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--as-of must be a date as YYYY-MM-DD, not {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # "--password x" must not pass for "--password-env x"
        prog="fhir-cohort",
        description="Pre-screen FHIR R4 records for clinical-trial eligibility.",
    )
    parser.add_argument("--version", action="version", version=f"fhir-cohort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "screen",
        allow_abbrev=False,
        help="screen patients and write a ranked, explained candidate list",
        description="Screen FHIR data for a trial. Without --source, screens the bundled "
        "synthetic cohort.",
    )
    run.add_argument(
        "--trial",
        default="misle",
        help="trial name in queries/ (default: misle) or a path to a trial YAML",
    )
    run.add_argument(
        "--source",
        action="append",
        metavar="PATH",
        help="NDJSON/Bundle file or folder; repeat for several "
        "(default: the bundled synthetic cohort)",
    )
    run.add_argument(
        "--as-of",
        type=_as_of,
        default=None,
        metavar="YYYY-MM-DD",
        help="evaluate as of this day; later evidence is ignored (default: today)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="output folder for candidates.json, candidates.csv, report.html and group.json "
        "(default: out)",
    )
    _state_option(run)
    run.add_argument(
        "--quiet", action="store_true", help="print only problems (for cron and timers)"
    )
    run.add_argument(
        "--full",
        action="store_true",
        help="with --server: pull everything, not only what changed since the last run",
    )
    run.add_argument(
        "--publish-group",
        action="store_true",
        help="with --server: PUT the listed candidates to the server as Group/fhir-cohort-TRIAL",
    )
    _server_options(run, required=False)
    run.add_argument(
        "--bulk",
        metavar="LEVEL",
        nargs="?",
        const="system",
        help="with --server: use Bulk $export at LEVEL: system (default), patient or group:<id>",
    )
    run.add_argument(
        "--bulk-dir",
        type=Path,
        metavar="DIR",
        help="where the export is downloaded, resumed and kept for the next incremental "
        "run (default: in the state folder)",
    )
    run.add_argument(
        "--type-filter",
        action="store_true",
        help="with --bulk: ask the server for only the trial's Observation codes "
        "(_typeFilter; only where the server reads it correctly)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="with --server: print the searches a screen would run, send nothing",
    )

    probe = commands.add_parser(
        "probe",
        allow_abbrev=False,
        help="report what a FHIR server can do for a trial's screen",
        description="Read the CapabilityStatement and try the searches the trial needs "
        "(read-only; nothing is written, no export started).",
    )
    probe.add_argument("--trial", default="misle", help="trial name or YAML path")
    _server_options(probe, required=True)

    review = commands.add_parser(
        "review",
        allow_abbrev=False,
        help="record a coordinator's decision about a candidate, or list the decisions",
        description="Review decisions are an append-only audit trail kept in the state. A "
        "patient marked declined or not-eligible is not shown as new again unless new "
        "evidence appears after the decision.",
    )
    review.add_argument("patient", nargs="?", metavar="PATIENT_ID", help="the candidate's id")
    review.add_argument("--status", choices=REVIEW_STATUSES, help="the decision")
    review.add_argument("--note", default="", metavar="TEXT", help="why, in a few words")
    review.add_argument(
        "--by", metavar="NAME", help="who decided (default: the login name)", default=None
    )
    review.add_argument(
        "--list", action="store_true", help="list the decisions (all, or PATIENT_ID's)"
    )
    review.add_argument("--trial", default="misle", help="trial name or YAML path")
    _state_option(review)

    seed = commands.add_parser(
        "seed",
        allow_abbrev=False,
        help="upload a synthetic cohort to a FHIR server (sandbox testing)",
        description="Upload synthetic FHIR data (the bundled cohort by default) as transaction "
        "Bundles of PUTs, one PUT each where transactions are refused.",
    )
    seed.add_argument(
        "--source",
        action="append",
        metavar="PATH",
        help="NDJSON/Bundle file or folder (default: the bundled synthetic cohort)",
    )
    seed.add_argument("--yes", action="store_true", help="really write to the server")
    _server_options(seed, required=True)
    return parser


def _state_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="DIR",
        help="run history and review decisions (default: $FHIR_COHORT_STATE, else "
        "$XDG_STATE_HOME/fhir-cohort, else ~/.local/state/fhir-cohort)",
    )


def _server_options(command: argparse.ArgumentParser, required: bool) -> None:
    group = command.add_argument_group(
        "server", "a live FHIR server; secrets only from environment variables or files"
    )
    group.add_argument(
        "--server",
        required=required,
        metavar="BASE_URL",
        help="FHIR base URL, e.g. https://hapi.fhir.org/baseR4",
    )
    group.add_argument(
        "--auth",
        choices=("none", "bearer", "basic", "smart"),
        default="none",
        help="authentication (default: none)",
    )
    group.add_argument(
        "--token-env",
        default="FHIR_COHORT_TOKEN",
        metavar="VAR",
        help="bearer: environment variable holding the token (default: FHIR_COHORT_TOKEN)",
    )
    group.add_argument("--token-file", metavar="PATH", help="bearer: file holding the token")
    group.add_argument("--user", metavar="NAME", help="basic: user name")
    group.add_argument(
        "--password-env",
        default="FHIR_COHORT_PASSWORD",
        metavar="VAR",
        help="basic: environment variable holding the password (default: FHIR_COHORT_PASSWORD)",
    )
    group.add_argument("--password-file", metavar="PATH", help="basic: file holding the password")
    group.add_argument("--client-id", help="smart: the registered client id")
    group.add_argument(
        "--private-key",
        metavar="PEM",
        help="smart: the client's private key "
        "(RSA -> RS384, EC P-384 -> ES384; a password from FHIR_COHORT_KEY_PASSWORD)",
    )
    group.add_argument("--key-id", help="smart: the key's kid, if the server wants one")
    group.add_argument(
        "--scope", default="system/*.read", help="smart: scopes to ask for (default: system/*.read)"
    )
    group.add_argument(
        "--token-url",
        help="smart: token endpoint (default: discovered from .well-known/smart-configuration)",
    )
    group.add_argument(
        "--ca-bundle", metavar="PEM", help="trust this CA bundle (TLS is always verified)"
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="read timeout per request (default: 60)",
    )
    group.add_argument(
        "--max-wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="longest Retry-After honoured before giving up (default: 120)",
    )
    group.add_argument(
        "--max-retries", type=int, default=5, help="retries per request (default: 5)"
    )
    group.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="requests in flight at once (default: 4, polite to shared servers)",
    )


def _progress(enabled: bool) -> Callable[[str, int | None, str], Callable[[int], None]]:
    bars: list[tqdm] = []

    def start(label: str, total: int | None, unit: str) -> Callable[[int], None]:
        for bar in bars:
            bar.close()
        scale = unit == "B"
        bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            unit_scale=scale,
            leave=False,
            disable=None if enabled else True,
            file=sys.stderr,
        )
        bars.append(bar)
        return bar.update

    return start


def _auth(args: argparse.Namespace) -> Auth:
    if args.auth == "bearer":
        return BearerAuth(
            read_secret(
                args.token_env if not args.token_file else None, args.token_file, "bearer token"
            )
        )
    if args.auth == "basic":
        if not args.user:
            raise AuthError("--auth basic needs --user")
        return BasicAuth(
            args.user,
            read_secret(
                args.password_env if not args.password_file else None,
                args.password_file,
                "password",
            ),
        )
    if args.auth == "smart":
        if not args.client_id or not args.private_key:
            raise AuthError("--auth smart needs --client-id and --private-key")
        return SmartBackendAuth(
            args.server,
            args.client_id,
            load_private_key(args.private_key),
            scope=args.scope,
            key_id=args.key_id,
            token_url=args.token_url,
            verify=args.ca_bundle or True,
        )
    return NoAuth()


def _client(args: argparse.Namespace) -> FhirClient:
    return FhirClient(
        args.server,
        _auth(args),
        timeout=(10.0, args.timeout),
        max_retries=args.max_retries,
        max_wait=args.max_wait,
        verify=args.ca_bundle or True,
        concurrency=args.concurrency,
    )


def _scope(args: argparse.Namespace) -> str:
    """What a run screened, so a run is compared with the previous run of the same data."""
    if args.server:
        mode = f"bulk-{args.bulk}" if args.bulk else "rest"
        return f"{mode}:{args.server.rstrip('/')}"
    paths = args.source or [bundled_fixtures()]
    return "files:" + "|".join(sorted(str(Path(p).resolve()) for p in paths))


def _sources(
    args: argparse.Namespace, trial: Trial, state: State | None, previous: RunRecord | None
) -> list[ResourceSource]:
    if not args.server:
        return [FileSource(*(args.source or [bundled_fixtures()]))]
    client = _client(args)
    if args.bulk:
        key = hashlib.sha256(_scope(args).encode()).hexdigest()[:16]
        folder = args.bulk_dir or (
            state.folder / "bulk" / key if state else args.out / "bulk-export"
        )

        def status(text: str) -> None:
            if not args.quiet:
                print(f"fhir-cohort: {text}", file=sys.stderr)

        return [
            BulkSource(
                client,
                trial,
                folder,
                level=args.bulk,
                incremental=not args.full,
                type_filter=args.type_filter,
                on_status=status,
            )
        ]
    source = RestSource(client, trial, concurrency=args.concurrency)
    if state is None or previous is None or not previous.checkpoint:
        source.pull = "full (no earlier complete run to build on)"
    elif args.full:
        source.pull = "full (asked for with --full)"
    elif previous.searches != source.searches_fingerprint():
        source.pull = "full (the trial's candidate searches changed since the last run)"
    else:
        source.since, source.known = previous.checkpoint, tuple(state.pool(previous.id))
    return [source]


def _attribute(sources: list[ResourceSource], name: str) -> str | None:
    """What the server source says for the next incremental run (None from files)."""
    for source in sources:
        value = getattr(source, name, None)
        if value is not None:
            return value() if callable(value) else value
    return None


def _write_outputs(screening: Screening, changes: Changes, group: Group, out: Path) -> None:
    files = {
        "candidates.json": json_bytes(screening, changes),
        "candidates.csv": csv_bytes(screening, changes),
        "report.html": render(screening, changes).encode("utf-8"),
        "group.json": group_json(group),
    }
    try:
        write_private_files(out, files)
    except OSError as error:
        raise SourceError(f"cannot write to {out}: {error.strerror or error}") from None


def _changes(
    state: State, trial: Trial, previous: RunRecord | None, current: dict, as_of: date
) -> Changes:
    """This run against the previous complete one, with the review decisions on record."""
    return compare(
        state.snapshots(previous.id) if previous else None,
        current,
        state.latest_reviews(trial.id),
        as_of,
        {"id": previous.id, "as_of": previous.as_of, "finished_at": previous.finished_at}
        if previous
        else None,
    )


def _screen(args: argparse.Namespace) -> int:
    trial = load_trial(args.trial)
    if args.publish_group and not args.server:
        raise SourceError("--publish-group needs --server")
    if args.dry_run:
        for source in _sources(args, trial, None, None):
            plan = getattr(source, "plan", None)
            print("\n".join(plan()) if plan else "nothing to plan: files are read as they are")
        return EXIT_OK
    as_of = args.as_of or date.today()
    scope = _scope(args)
    with State(args.state or default_state_dir()) as state, state.lock():
        previous = state.previous_run(trial.id, scope)
        sources = _sources(args, trial, state, previous)
        started = utc_now()
        result = screen(
            sources, trial, as_of, progress=_progress(not args.quiet), workdir=state.scratch()
        )
        current = {c.result.patient: snapshot(c) for c in result.candidates}
        changes = _changes(state, trial, previous, current, as_of)
        group = build_group(result)
        _write_outputs(result, changes, group, args.out)
        missing = result.missing_data()
        state.record_run(
            trial=trial.id,
            scope=scope,
            as_of=as_of.isoformat(),
            started_at=started,
            outcome="partial" if missing else "complete",
            checkpoint=_attribute(sources, "checkpoint"),
            searches=_attribute(sources, "searches_fingerprint"),
            funnel=result.funnel.to_dict(),
            candidates=[
                (c.result.patient, current[c.result.patient], candidate_dict(c))
                for c in result.candidates
            ],
            pool=[p for s in sources for p in getattr(s, "pool", ())],
        )
    pull = next((p for s in sources if (p := getattr(s, "pull", None))), None)
    if args.publish_group:
        _client(args).request(
            "PUT",
            f"Group/{group.id}",
            kind="publish",
            data=group_json(group),
            headers={"Content-Type": "application/fhir+json"},
        )
    for line in problems(result, pull):
        print(f"fhir-cohort: warning: {line}", file=sys.stderr)
    if not args.quiet:
        print(summary(result, str(args.out), changes, pull))
        if args.publish_group:
            print(f"published Group/{group.id} ({group.quantity} members) to {args.server}")
    return EXIT_PARTIAL if missing else EXIT_OK


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise SourceError("say who decided with --by NAME (the login name is unknown)") from None


def _review(args: argparse.Namespace) -> int:
    trial = load_trial(args.trial)
    with State(args.state or default_state_dir()) as state:
        if args.list:
            print("\n".join(review_lines(state.reviews(trial.id, args.patient), trial.id)))
            return EXIT_OK
        if not args.patient or not args.status:
            raise SourceError("review needs PATIENT_ID and --status (or --list)")
        review = state.add_review(
            trial.id, args.patient, args.status, args.note, args.by or _login()
        )
    print(
        f"recorded: {review.patient} {review.status} by {review.by} at {review.at}"
        + (f" ({review.note})" if review.note else "")
    )
    return EXIT_OK


def _probe(args: argparse.Namespace) -> int:
    trial = load_trial(args.trial)
    findings = probe(_client(args), trial)
    print(f"fhir-cohort probe of {args.server} for {trial.id}")
    print("\n".join(f.line() for f in findings))
    return EXIT_OK if all(f.ok is not False for f in findings) else EXIT_SERVER


def _seed(args: argparse.Namespace) -> int:
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
        return EXIT_USAGE
    bar = tqdm(desc="seeding", unit="resources", leave=False, file=sys.stderr, disable=None)
    report = seed(_client(args), source, bar.update)
    bar.close()
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted((report.by_type or {}).items()))
    how = (f"{report.transactions} transaction Bundles" if report.transactions else "") + (
        f"{' and ' if report.transactions and report.puts else ''}{report.puts} single PUTs"
        if report.puts
        else ""
    )
    print(f"seeded {report.resources} resources to {args.server} ({kinds}) in {how}")
    return EXIT_OK


COMMANDS = {"screen": _screen, "review": _review, "probe": _probe, "seed": _seed}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except StateLocked as error:
        print(f"fhir-cohort: error: {error}", file=sys.stderr)
        return EXIT_LOCKED
    except (TrialError, SourceError, AuthError, StateError) as error:
        print(f"fhir-cohort: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as error:
        print(f"fhir-cohort: server error: {error}", file=sys.stderr)
        return EXIT_SERVER
    except KeyboardInterrupt:
        print("fhir-cohort: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so in one line; the traceback on request
        if os.environ.get("FHIR_COHORT_DEBUG"):
            raise
        print(
            f"fhir-cohort: unexpected error ({type(error).__name__}: {error}); "
            "set FHIR_COHORT_DEBUG=1 for details and please report it",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
