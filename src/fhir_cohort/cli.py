"""Command line: ``fhir-cohort screen`` and friends.

Rule: the command line parses arguments, turns unusable input into one-line
errors with a documented exit code, draws progress on stderr and prints the
summary on stdout; all the work is in :mod:`fhir_cohort.pipeline`.

Exit codes: 0 done; 2 unusable input (missing path, unknown trial, bad date,
bad trial definition); 1 an unexpected failure (a bug: please report it).
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
from .criteria.trial import TrialError, load_trial, queries_dir
from .outputs.candidates import write_csv, write_json
from .outputs.terminal import summary
from .pipeline import screen
from .sources import SourceError
from .sources.files import FileSource

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


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
        prog="fhir-cohort", description="Pre-screen FHIR R4 records for clinical-trial eligibility."
    )
    parser.add_argument("--version", action="version", version=f"fhir-cohort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "screen",
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
    return parser


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


def _screen(args: argparse.Namespace) -> int:
    trial = load_trial(args.trial)
    sources = [FileSource(*(args.source or [bundled_fixtures()]))]
    as_of = args.as_of or date.today()
    result = screen(sources, trial, as_of, progress=_progress(not args.quiet))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out / "candidates.json")
        write_csv(result, args.out / "candidates.csv")
    except OSError as error:
        raise SourceError(f"cannot write to {args.out}: {error.strerror or error}") from None
    if not args.quiet:
        print(summary(result, str(args.out)))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _screen(args)
    except (TrialError, SourceError) as error:
        print(f"fhir-cohort: error: {error}", file=sys.stderr)
        return EXIT_USAGE
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
