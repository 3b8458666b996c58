"""The screening log sponsors ask for: counts per step and a CSV of the decisions.

Rule: a period is two days, both included (default: the last 30 days). Pre-screened is
the number listed (eligible, washout, needs-review) by the latest run finished in the
period, read from the run's funnel counts, which ``purge`` keeps. Each later step counts
the patients with at least one decision of that kind in the period; close reasons are
counted as written. The CSV has one row per decision in the period, oldest first.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

from ..outputs.candidates import _safe_cell
from ..state import State
from .worklist import FUNNEL_STEPS

LISTED = ("eligible", "washout", "needs-review")
CSV_COLUMNS = (
    "record_id",
    "trial_id",
    "decision",
    "decision_date",
    "decided_by",
    "close_reason",
    "note",
)


def period(start: str | None, end: str | None, today: date | None = None) -> tuple[str, str]:
    """The days asked for as (from, to); a missing or unreadable day takes its default.

    >>> period("2026-01-01", "2026-01-31")
    ('2026-01-01', '2026-01-31')
    >>> period("junk", None, date(2026, 3, 31))
    ('2026-03-01', '2026-03-31')
    """
    today = today or date.today()

    def day(text: str | None, default: date) -> date:
        try:
            return date.fromisoformat(text or "")
        except ValueError:
            return default

    last = day(end, today)
    return day(start, last - timedelta(days=30)).isoformat(), last.isoformat()


def _within(at: str, span: tuple[str, str]) -> bool:
    return span[0] <= at[:10] <= span[1]


@dataclass(frozen=True)
class Counts:
    """The log's page: how many at each step, and the close reasons."""

    prescreened: int | None
    run_finished: str | None
    steps: dict[str, int]
    close_reasons: Counter


def counts(state: State, trial: str, span: tuple[str, str]) -> Counts:
    runs = [(run, funnel) for run, funnel in state.funnels(trial) if _within(run.finished_at, span)]
    prescreened = None
    finished = None
    if runs:
        run, funnel = runs[-1]
        by_status = funnel.get("status") or {}
        prescreened = sum(int(by_status.get(status, 0)) for status in LISTED)
        finished = run.finished_at
    reviews = [r for r in state.reviews(trial) if _within(r.at, span)]
    steps = {step: len({r.patient for r in reviews if r.status == step}) for step in FUNNEL_STEPS}
    reasons = Counter(
        a.value for a in state.actions(trial) if a.kind == "close" and _within(a.at, span)
    )
    return Counts(prescreened, finished, steps, reasons)


def csv_bytes(state: State, trial: str, span: tuple[str, str]) -> bytes:
    """One row per decision in the period (text from people cannot start a formula)."""
    reasons = {(a.patient, a.at): a.value for a in state.actions(trial) if a.kind == "close"}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in state.reviews(trial):
        if _within(r.at, span):
            row = (r.patient, trial, r.status, r.at[:10], r.by, reasons.get((r.patient, r.at), ""))
            writer.writerow([_safe_cell(cell) for cell in (*row, r.note)])
    return buffer.getvalue().encode("utf-8")
