"""What several commands share: the bundled cohort and progress bars on stderr.

Rule: light parts only; what reaches a server (``commands/server.py``) is imported by
the commands that use one, so a screen of files never loads the HTTP stack.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from ..criteria.language import queries_dir
from ..sources import Progress, ProgressStart


def bundled_fixtures() -> Path:
    """The synthetic MiSLE cohort shipped with fhir-cohort (the default source)."""
    return queries_dir().parent / "fixtures" / "misle-cohort"


def progress_bars() -> ProgressStart:
    """Progress bars on stderr, shown only when it is a terminal (``--quiet``: pass no
    progress at all)."""
    # No monitor thread: a screen forks its workers, which is safe only in a process
    # running one thread (engines/workers.py starts them another way otherwise).
    tqdm.monitor_interval = 0
    bars: list[tqdm] = []

    def start(label: str, total: int | None, unit: str) -> Progress:
        for bar in bars:
            bar.close()
        scale = unit == "B"
        bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            unit_scale=scale,
            leave=False,
            disable=None,  # None: off when stderr is not a terminal
            file=sys.stderr,
        )
        bars.append(bar)
        return bar.update

    return start
