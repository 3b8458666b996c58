"""``fhir-cohort purge --older-than DAYS``: retention of patient data.

Rule: runs finished more than DAYS ago lose their candidates and candidate pool in the
state (their counts and funnel stay, and so do decisions and the audit trail); the
latest complete run of each screen is kept whatever its age, since the next run compares
with it. A scope's Bulk export kept in the state (the baseline its incremental
``--bulk`` runs build on) in which nothing was written for more than DAYS is removed
(the next Bulk run of that scope exports in full); one a nightly run uses stays. Output
files (``--out``) last written more than DAYS ago are removed. Holds the state's lock,
so it never runs beside a screen.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..errors import Exit, UsageError
from ..private_files import locked_folder
from ..state import State, default_state_dir

OUTPUT_FILES = ("candidates.json", "candidates.csv", "report.html", "group.json")


def old_outputs(folder: Path, days: int, now: float) -> list[Path]:
    """The output files in ``folder`` last written more than ``days`` days before ``now``."""
    limit = now - days * 86400
    return [
        path
        for name in OUTPUT_FILES
        if (path := folder / name).is_file() and path.stat().st_mtime < limit
    ]


def run(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        raise UsageError(f"--older-than must be 0 or more days, not {args.older_than}")
    before = datetime.now(timezone.utc) - timedelta(days=args.older_than)
    with State(args.state or default_state_dir()) as state, state.lock():
        purged = state.purge(before.strftime("%Y-%m-%dT%H:%M:%SZ"))
        exports = state.remove_exports(before.timestamp())
    print(f"purged the patient data of {len(purged)} run(s); their counts are kept")
    if exports:
        print(f"removed {exports} Bulk export(s) unused for {args.older_than} days")
    for folder in args.out or ():
        if not folder.is_dir():
            raise UsageError(f"--out {folder} is not a folder")
        with locked_folder(folder):
            removed = old_outputs(folder, args.older_than, time.time())
            for path in removed:
                path.unlink()
        print(f"{folder}: removed {len(removed)} output file(s)")
    return Exit.OK
