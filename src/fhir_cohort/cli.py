"""Command line: ``fhir-cohort screen`` and friends.

Rule: this module parses arguments and maps the errors a run can end in to
the documented exit codes (:class:`fhir_cohort.errors.Exit`); each
sub-command's work is in its own module under :mod:`fhir_cohort.commands`,
imported only when that command runs, so ``fhir-cohort --help`` stays quick.

Exit codes: 0 done; 2 unusable input (missing path, unknown trial, bad date,
bad trial definition, bad authentication settings, unusable state folder);
3 the server failed (no answer, refused, throttled past --max-wait); 4 done
with partial data (a file could not be read, an export listed errors, a
server search was cut short: the outputs are written and say what is
missing; records that are invalid but read leave a run complete: 0); 5
another run holds the state's or the output folder's lock; 1 an unexpected
failure (a bug: please report it). Secrets come from environment variables or
files only, a ``--server`` URL holding credentials is refused before anything
can store or echo it, and every error printed has each known secret masked and
its control characters removed (:mod:`fhir_cohort.transport.redact`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from . import __version__
from .engines import EngineName
from .errors import Exit, Locked, ServerFailure, UsageError
from .reviews import REVIEW_STATUSES
from .state import ROLES
from .transport.redact import shown


def _as_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--as-of must be a date as YYYY-MM-DD, not {text!r}"
        ) from None


def _whole_number(what: str) -> Callable[[str], int]:
    """An argument type: a whole number of at least 1, else one line naming ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number >= 1, not {text!r}")
        return value

    return parse


_mebibytes = _whole_number("a size in MiB")


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
        action="append",
        metavar="NAME|FILE",
        help="trial name in queries/ (default: misle) or a path to a trial YAML; repeat for "
        "several, or 'all' for every trial in queries/: the data is read once and each "
        "trial's outputs go to OUT/<trial>/",
    )
    run.add_argument(
        "--site",
        type=Path,
        metavar="FILE",
        help="a site file adding local codes to the trials' value sets "
        "(valuesets: {lab-hba1c: [{system: ..., code: ...}]})",
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
        "(default: out; locked while a run writes it)",
    )
    run.add_argument(
        "--base",
        metavar="URL",
        help="with --source: the base URL of the server the files were exported from, so "
        "its absolute references (URL/Patient/id) count as this export's own",
    )
    limits = run.add_argument_group(
        "file limits", "what one file may hold before it is not read whole (memory stays bounded)"
    )
    for option, default, what in (
        ("--max-line-mib", 64, "longest NDJSON line read"),
        ("--max-bundle-mib", 64, "largest Bundle (.json) file read"),
        ("--max-inflated-mib", 65536, "most a compressed file is read to, inflated"),
    ):
        limits.add_argument(
            option,
            type=_mebibytes,
            default=default,
            metavar="MIB",
            help=f"{what}, in MiB (default: {default})",
        )
    engines = run.add_argument_group("engines", "where the screen runs (the answer is the same)")
    engines.add_argument(
        "--engine",
        choices=[name.value for name in EngineName],
        default=EngineName.WORKERS.value,
        help="workers (default): --workers processes on this machine (a server is read by "
        "one); embedded: this one process; spark: a Spark cluster or local[N] "
        "(pip install 'fhir-cohort[spark]')",
    )
    engines.add_argument(
        "--workers",
        type=_whole_number("a number of workers"),
        default=None,
        metavar="N",
        help="worker processes (default: the number of cores; 1: the embedded engine)",
    )
    engines.add_argument(
        "--spark-master",
        metavar="URL",
        help="for --engine spark: the master (default: local[*], or what spark-submit set)",
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

    _workbench_commands(commands)

    check = commands.add_parser(
        "check-trial",
        allow_abbrev=False,
        help="validate a trial file (criteria language) and say what it means",
        description="Validate a trial file strictly (exit 2 naming file, line and entry) and "
        "print its criteria, value sets, what it reads and its server plan.",
    )
    check.add_argument("trial", metavar="FILE|NAME", help="a trial name in queries/ or a YAML path")
    check.add_argument(
        "--site", type=Path, metavar="FILE", help="with a site file's local codes (checked too)"
    )

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


def _workbench_commands(commands: argparse._SubParsersAction) -> None:
    """``users``, ``serve`` and ``purge``: the coordinators' workbench and its upkeep."""
    users = commands.add_parser(
        "users",
        allow_abbrev=False,
        help="add, list, disable the people who may sign in to the workbench",
        description="Passwords are read from standard input (or --password-env VAR), "
        "never from an argument, and kept as argon2 hashes.",
    )
    users.add_argument("action", choices=("add", "list", "disable", "reset-password"))
    users.add_argument("name", nargs="?", metavar="NAME", help="the user's sign-in name")
    users.add_argument("--role", choices=ROLES, default="coordinator", help="with add")
    users.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable (default: standard input)",
    )
    _state_option(users)

    serve = commands.add_parser(
        "serve",
        allow_abbrev=False,
        help="the coordinators' workbench: a web service over the runs and decisions",
        description="Serve the worklist, patient pages and screening log of every trial in "
        "the state. Refuses to start until a user exists (fhir-cohort users add).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    serve.add_argument(
        "--trusted-proxy",
        metavar="ADDRESS",
        help="behind a TLS reverse proxy at ADDRESS (e.g. 127.0.0.1): believe its "
        "X-Forwarded-For/-Proto/-Host headers (one hop, from it only) and mark cookies Secure",
    )
    serve.add_argument(
        "--trial",
        action="append",
        metavar="YAML",
        help="a trial file whose labels to show; repeat for several (default: the bundled "
        "trial of each name in the state)",
    )
    _state_option(serve)

    blocked = commands.add_parser(
        "do-not-contact",
        allow_abbrev=False,
        help="keep patients who opted out of research contact off every worklist",
        description="Append-only records in the state, shared with the workbench.",
    )
    blocked.add_argument("action", choices=("add", "remove", "list"))
    blocked.add_argument("patient", nargs="?", metavar="PATIENT_ID")
    blocked.add_argument("--reason", default="", metavar="TEXT", help="why (required with add)")
    blocked.add_argument("--by", metavar="NAME", help="who recorded it (default: the login name)")
    _state_option(blocked)

    purge = commands.add_parser(
        "purge",
        allow_abbrev=False,
        help="remove old runs' patient data from the state (and old output files)",
        description="Retention: runs finished more than DAYS ago lose their patient data; "
        "their counts stay. The latest complete run of each screen is kept whatever its age.",
    )
    purge.add_argument("--older-than", type=int, required=True, metavar="DAYS")
    purge.add_argument(
        "--out",
        action="append",
        type=Path,
        metavar="DIR",
        help="an output folder whose files older than DAYS are removed too; repeat for several",
    )
    _state_option(purge)


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
    limits = command.add_argument_group(
        "server limits", "bounds on what a server may cost a run (see the README)"
    )
    limits.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="total time per request: connecting, the headers and the whole answer (default: 60)",
    )
    limits.add_argument(
        "--max-run-time",
        type=float,
        default=21600.0,
        metavar="SECONDS",
        help="no request or wait goes past this long after the start (default: 21600, 6 h)",
    )
    limits.add_argument(
        "--max-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the longest the server may make the run wait: a longer Retry-After stops the "
        "run, and so does a Bulk export still running after this long (the next run resumes "
        "it) (default: 120; 3600 with --bulk)",
    )
    limits.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="largest JSON answer, after decompression (default: 64)",
    )
    limits.add_argument(
        "--max-file-gb",
        type=float,
        default=16.0,
        metavar="GB",
        help="largest Bulk export file written to disk (default: 16)",
    )
    limits.add_argument(
        "--max-inflate-ratio",
        type=int,
        default=200,
        metavar="N",
        help="a compressed Bulk file may inflate at most N times (past 16 MB; "
        "real NDJSON: about 10) (default: 200)",
    )
    limits.add_argument(
        "--max-pages",
        type=int,
        default=10000,
        metavar="N",
        help="pages followed per search, and never more than the total the server "
        "announced needs (default: 10000)",
    )
    limits.add_argument(
        "--max-retries", type=int, default=5, metavar="N", help="retries per request (default: 5)"
    )
    group.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="requests in flight at once (default: 4, polite to shared servers)",
    )


def _say(text: str) -> None:
    """Print one line on stderr, with every known secret masked and no control characters."""
    print(shown(text), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "server", None) is not None:  # before anything could store or echo it
            importlib.import_module("fhir_cohort.transport.urls").check_base(args.server)
        module = args.command.replace("-", "_")
        command = importlib.import_module(f"fhir_cohort.commands.{module}")
        return int(command.run(args))
    except Locked as error:
        _say(f"fhir-cohort: error: {error}")
        return Exit.LOCKED
    except UsageError as error:
        _say(f"fhir-cohort: error: {error}")
        return Exit.USAGE
    except ServerFailure as error:
        _say(f"fhir-cohort: server error: {error}")
        return Exit.SERVER
    except KeyboardInterrupt:
        _say("fhir-cohort: interrupted")
        return 130
    except Exception as error:  # a bug: say so in one line; the traceback on request
        if os.environ.get("FHIR_COHORT_DEBUG"):
            raise
        _say(
            f"fhir-cohort: unexpected error ({type(error).__name__}: {error}); "
            "set FHIR_COHORT_DEBUG=1 for details and please report it"
        )
        return Exit.BUG


if __name__ == "__main__":
    sys.exit(main())
