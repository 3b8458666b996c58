"""Command line: ``fhir-cohort screen`` and friends.

Rule: the command line parses arguments, turns unusable input into one-line
errors with a documented exit code, draws progress on stderr and prints the
summary on stdout; all the work is in :mod:`fhir_cohort.pipeline`.

Exit codes: 0 done; 2 unusable input (missing path, unknown trial, bad date,
bad trial definition, bad authentication settings); 3 the server failed (no
answer, refused, throttled past --max-wait); 1 an unexpected failure (a bug:
please report it). Secrets come from environment variables or files only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .criteria.trial import Trial, TrialError, load_trial, queries_dir
from .outputs.candidates import write_csv, write_json
from .outputs.report import write_report
from .outputs.terminal import summary
from .pipeline import screen
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

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3


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
        help="output folder for candidates.json and candidates.csv (default: out)",
    )
    run.add_argument("--quiet", action="store_true", help="print only problems")
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
        help="where the export is downloaded and resumed (default: OUT/bulk-export)",
    )
    run.add_argument(
        "--since",
        metavar="INSTANT",
        help="with --bulk: only resources changed since (e.g. 2026-11-24T00:00:00.000Z)",
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


def _sources(args: argparse.Namespace, trial: Trial) -> list[ResourceSource]:
    if not args.server:
        return [FileSource(*(args.source or [bundled_fixtures()]))]
    client = _client(args)
    if args.bulk:
        folder = args.bulk_dir or args.out / "bulk-export"

        def status(text: str) -> None:
            if not args.quiet:
                print(f"fhir-cohort: {text}", file=sys.stderr)

        return [
            BulkSource(
                client,
                trial,
                folder,
                level=args.bulk,
                since=args.since,
                type_filter=args.type_filter,
                on_status=status,
            )
        ]
    return [RestSource(client, trial, concurrency=args.concurrency)]


def _screen(args: argparse.Namespace) -> int:
    trial = load_trial(args.trial)
    sources = _sources(args, trial)
    if args.dry_run:
        for source in sources:
            plan = getattr(source, "plan", None)
            print("\n".join(plan()) if plan else "nothing to plan: files are read as they are")
        return EXIT_OK
    as_of = args.as_of or date.today()
    result = screen(sources, trial, as_of, progress=_progress(not args.quiet))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out / "candidates.json")
        write_csv(result, args.out / "candidates.csv")
        write_report(result, args.out / "report.html")
    except OSError as error:
        raise SourceError(f"cannot write to {args.out}: {error.strerror or error}") from None
    if not args.quiet:
        print(summary(result, str(args.out)))
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


COMMANDS = {"screen": _screen, "probe": _probe, "seed": _seed}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (TrialError, SourceError, AuthError) as error:
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
