"""report.html: the coordinators' view of one screen, one self-contained file.

Rule: everything shown comes from the finished screening, the changes since
the previous run and the review decisions, and is escaped by Jinja2's
autoescape (names and code texts come from the server and may hold markup);
no CDN, no network, no script from outside the file. The funnel and each
candidate's evidence timeline are inline SVG drawn from plain numbers worked
out here; filtering by status is a few lines of inline JavaScript that only
toggles rows, so the page reads the same printed or without scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemBytecodeCache, PackageLoader, select_autoescape
from jinja2.bccache import Bucket

from ..changes import Changes
from ..criteria.language import Trial
from ..criteria.rank_terms import Ranked
from ..criteria.results import STATUSES, WASHOUT, Evidence
from ..criteria.tree import NodeResult
from ..listing import headers
from ..pipeline import Screening
from ..private_files import write_private
from .candidates import (
    acted_on,
    flagged,
    plain_value,
    reasons,
    to_verify,
    work_order,
)

LANE_HEIGHT, LANE_LABEL, TIMELINE_WIDTH, TIMELINE_AXIS = 20, 170, 720, 30
TIMELINE_MARGIN = 70  # room right of the plot for half a centred date label
RECENT = timedelta(days=365)  # the last year before as-of gets most of the width
RECENT_SHARE = 0.7
CHUNK = 1 << 16  # characters of the page written at a time


@dataclass(frozen=True)
class TimeScale:
    """Days to x positions; when the evidence reaches further back than a year
    before as-of, the older years share the left part of the axis.

    >>> scale = TimeScale(date(2016, 1, 1), date(2025, 6, 30), date(2026, 9, 1), 500)
    >>> scale.x(date(2016, 1, 1)), scale.x(date(2025, 6, 30)), scale.x(date(2026, 9, 1))
    (0, 150, 500)
    >>> TimeScale(None, date(2025, 6, 30), date(2026, 9, 1), 500).x(date(2025, 6, 30))
    0
    """

    start: date | None  # None: nothing older than the seam, no compressed part
    seam: date
    end: date
    width: int

    def x(self, day: date) -> int:
        left = round(self.width * (1 - RECENT_SHARE)) if self.start else 0
        if day < self.seam and self.start:
            span = max(1, (self.seam - self.start).days)
            return round(left * (day - self.start).days / span)
        span = max(1, (self.end - self.seam).days)
        return left + round((self.width - left) * min((day - self.seam).days, span) / span)


def _point_label(e: Evidence) -> str:
    return " ".join(
        part
        for part in (
            e.date.isoformat() if e.date else None,
            e.display or e.code,
            plain_value(e.value) if e.value else None,
        )
        if part
    )


Dated = list[tuple[date, Evidence]]


def _with_dates(evidence: Iterable[Evidence]) -> Dated:
    """The dated evidence, each with its date (undated evidence is not drawn)."""
    return [(e.date, e) for e in evidence if e.date]


def _dated(node: NodeResult) -> Dated:
    """The dated evidence a rule shows: its named sub-rules' own, else its own."""
    named = [p for p in node.parts if p.id]
    if node.kind in ("at_least", "score") and named:
        return _with_dates(e for p in named for e in p.evidence)
    return _with_dates(node.evidence)


def _windows(node: NodeResult) -> list[tuple[date, date, str]]:
    """The time windows a rule and its sub-rules set (drawn as bands)."""
    own = [(node.window[0], node.window[1], "window")] if node.window else []
    return own + [w for p in node.parts for w in _windows(p)]


def timeline(candidate: Ranked, as_of: date, trial: Trial) -> dict:
    """A candidate's dated evidence by lane (one per inclusion but age, one per exclusion
    with evidence), with time windows and washout windows to their end date."""
    result = candidate.result
    lanes: list[tuple[str, Dated, list[tuple[date, date, str]]]] = []
    for key, node in result.inclusions.items():
        if node.kind != "age":
            lanes.append((trial.label(key), _dated(node), _windows(node)[:1]))
    for key, finding in result.exclusions.items():
        dated = _with_dates(finding.evidence)
        bars = []
        if finding.result == WASHOUT and finding.until:
            last = max((day for day, _ in dated), default=as_of)
            label = f"{trial.label(key)} until {finding.until.isoformat()}"
            bars.append((last, finding.until, label))
        if dated or bars:
            lanes.append((trial.label(key), dated, bars))
    days = [day for _, points, _ in lanes for day, _ in points] + [
        day for _, _, bars in lanes for bar in bars for day in bar[:2]
    ]
    end = max([as_of, *days]) + timedelta(days=15)
    seam = as_of - RECENT
    earliest = min([seam, *days])
    scale = TimeScale(earliest if earliest < seam else None, seam, end, TIMELINE_WIDTH)
    ticks = [(seam, seam.isoformat()), (as_of, f"as of {as_of.isoformat()}")]
    if scale.start:
        ticks.insert(0, (scale.start, scale.start.isoformat()))
    if result.eligible_from:
        ticks.append((result.eligible_from, f"eligible {result.eligible_from.isoformat()}"))
    return {
        "width": LANE_LABEL + TIMELINE_WIDTH + TIMELINE_MARGIN,
        "height": len(lanes) * LANE_HEIGHT + TIMELINE_AXIS,
        "plot": LANE_LABEL,
        "plot_width": TIMELINE_WIDTH,
        "lane": LANE_HEIGHT,
        "seam": scale.x(seam) if scale.start else None,
        "as_of": scale.x(as_of),
        "eligible": scale.x(result.eligible_from) if result.eligible_from else None,
        "ticks": [{"x": scale.x(day), "label": label} for day, label in ticks],
        "lanes": [
            {
                "label": label,
                "y": index * LANE_HEIGHT,
                "points": [{"x": scale.x(day), "label": _point_label(e)} for day, e in points],
                "bars": [
                    {
                        "x": scale.x(start),
                        "width": max(2, scale.x(stop) - scale.x(start)),
                        "label": text,
                        "washout": text != "window",
                    }
                    for start, stop, text in bars
                ],
            }
            for index, (label, points, bars) in enumerate(lanes)
        ],
    }


FUNNEL_ROW, FUNNEL_WIDTH = 34, 640
SIDE_BY_SIDE = ("eligible", "washout")  # the funnel's last steps, drawn on one row
STEP_WORDS = {"eligible": "eligible now", "washout": "in washout"}


def evidence_rows(evidence: Iterable[Evidence]) -> list[dict]:
    """Evidence as the cards print it: date, what, the value in plain words, the record."""
    return [
        {
            "date": e.date.isoformat() if e.date else "undated",
            "what": e.display or e.code or "",
            "value": plain_value(e.value) if e.value else "",
            "resource": e.resource,
            "note": e.note or "",
        }
        for e in evidence
    ]


def funnel_rows(screening: Screening) -> list[list[dict]]:
    """The funnel from ``funnel.steps``: patients read, then each step on its own row, the
    last steps (eligible now, in washout) side by side; each bar centred, its width in
    proportion to the patients read.

    Every bar is a dict (label, count, x, width, y) for the SVG.
    """
    funnel = screening.funnel.to_dict()
    read = funnel["patients_read"] or 1
    steps = [("read", "patients read", funnel["patients_read"])]
    steps += [(s["id"], STEP_WORDS.get(s["id"], s["label"]), s["count"]) for s in funnel["steps"]]
    rows: list[list[tuple[str, int]]] = [
        [(label, n)] for key, label, n in steps if key not in SIDE_BY_SIDE
    ]
    last = [(label, n) for key, label, n in steps if key in SIDE_BY_SIDE]
    if last:
        rows.append(last)
    drawn = []
    for index, row in enumerate(rows):
        widths = [max(2, round(FUNNEL_WIDTH * n / read)) if n else 0 for _, n in row]
        x = (FUNNEL_WIDTH - sum(widths) - 8 * (len(row) - 1)) // 2
        bars = []
        for (label, n), width in zip(row, widths, strict=True):
            bars.append(
                {"label": label, "count": n, "x": x, "width": width, "y": index * FUNNEL_ROW}
            )
            x += width + 8
        drawn.append(bars)
    return drawn


def exclusion_counts(screening: Screening) -> list[dict]:
    """Each exclusion that was found, apart from the funnel (a patient can have several)."""
    trial = screening.trial
    return [
        {
            "label": trial.label(key),
            "counts": {r: n for r, n in counts.items() if r != "clear" and n},
        }
        for key, counts in screening.funnel.to_dict()["exclusions"].items()
        if any(n for r, n in counts.items() if r != "clear")
    ]


def card(candidate: Ranked, trial: Trial) -> dict:
    """A candidate's card: the criteria met first, each on one line with the named
    sub-criteria it met; the rows of those met (with their evidence) and of those not met
    apart (folded on the page); exclusions found, and the clear ones as one line of labels.
    """
    met, rows = [], []
    for key, node in candidate.result.inclusions.items():
        own = criterion_rows(trial, key, node)
        rows += own
        if node.result == "met":
            parts = [r["label"] for r in own[1:] if r["result"] == "met"]
            shown = str(node.shown) if node.kind == "age" else own[0]["shown"][4:].strip("()")
            met.append({"label": trial.label(key), "shown": shown, "parts": parts})
    exclusions = candidate.result.exclusions
    return {
        "met": met,
        "met_rows": [r for r in rows if r["result"] == "met"],
        "open": [r for r in rows if r["result"] != "met"],
        "no_exclusion": [trial.label(k) for k, f in exclusions.items() if f.result == "clear"],
        "found": [
            {
                "label": trial.label(k),
                "result": f.result + (f" until {f.until.isoformat()}" if f.until else ""),
                "evidence": evidence_rows(f.evidence),
            }
            for k, f in exclusions.items()
            if f.result != "clear"
        ],
    }


class _Compiled(FileSystemBytecodeCache):
    """Jinja2's bytecode cache in a folder, which never fails a run: a compiled template
    that cannot be written (a full disk) is compiled again next time."""

    def dump_bytecode(self, bucket: Bucket) -> None:
        with suppress(OSError):
            super().dump_bytecode(bucket)


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Environment(Environment):
    """Jinja2, reading ``row.name`` on a plain dict as its item at once: what Jinja2 does
    after looking for an attribute a dict does not have, without that failed look and its
    exception (a third of rendering a long list of rows and cards). A name that is a dict's
    own attribute (``items``, ``get``) goes Jinja2's way, attribute first."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _environment(compiled: Path | None) -> Environment:
    """Jinja2 with autoescape. ``compiled``: an owner-only folder where the compiled
    template is kept between runs (Jinja2's bytecode cache; compiling it takes 0.1 s a
    run, and it is compiled again when the template or Jinja2 changes)."""
    environment = _Environment(
        loader=PackageLoader("fhir_cohort.outputs", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        bytecode_cache=_Compiled(str(compiled)) if compiled else None,
    )
    environment.filters["plain"] = plain_value  # text from changes.py and reviews
    return environment


def _row(candidate: Ranked, trial: Trial, changes: Changes | None) -> dict:
    """What the list's row and the card's heading show of a candidate (a few fields)."""
    result = candidate.result
    review = changes.reviews.get(result.patient) if changes else None
    return {
        "rank": candidate.rank,
        "patient": result.patient,
        "name": result.name,
        "status": result.status,
        "age": result.age,
        "eligible_from": result.eligible_from.isoformat() if result.eligible_from else None,
        "flagged": flagged(candidate, trial),
        "to_verify": to_verify(candidate, trial),
        "acted": acted_on(result.patient, changes),
        "reasons": reasons(candidate, trial),
        "review": review.describe() if review else "",
        "review_note": review.review.note if review else "",
        "change": changes.for_patient(result.patient) if changes else "",
        "cells": [_cell(node) for node in result.inclusions.values()],
    }


def pieces(
    screening: Screening, changes: Changes | None = None, compiled: Path | None = None
) -> Iterator[str]:
    """The report page, in the pieces the template makes as it goes.

    The list's rows are made first (a few fields a candidate); each card, with its
    evidence and timeline, only when its turn comes and dropped after. So neither the
    cards nor the page are ever whole in memory: a common-disease trial lists thousands
    of candidates, and rendering 4,927 of them whole took 211 MiB.
    """
    trial = screening.trial
    rows = [_row(c, trial, changes) for c in work_order(screening.candidates, changes)]
    cards = (
        {**row, "card": card(c, trial), "timeline": timeline(c, screening.as_of, trial)}
        for c, row in zip(work_order(screening.candidates, changes), rows, strict=True)
    )
    funnel = funnel_rows(screening)
    return (
        _environment(compiled)
        .get_template("report.html.j2")
        .generate(
            trial=trial,
            as_of=screening.as_of.isoformat(),
            funnel=funnel,
            chart={"width": FUNNEL_WIDTH, "row": FUNNEL_ROW, "height": len(funnel) * FUNNEL_ROW},
            exclusions=exclusion_counts(screening),
            status=screening.funnel.to_dict()["status"],
            to_contact=[r for r in rows if not r["acted"]],
            acted=[r for r in rows if r["acted"]],
            candidates=cards,
            inclusions=[trial.label(key) for key in trial.spec.inclusions],
            statuses=STATUSES,
            notes=screening.data_quality.to_list(),
            retrieval=screening.retrieval,
            changes=changes,
            missing=screening.missing_data(),
            unreadable=screening.unreadable_data(),
            doubted=sum(c.doubted for c in headers(screening.candidates)),
        )
    )


def render(
    screening: Screening, changes: Changes | None = None, compiled: Path | None = None
) -> str:
    """The report page, whole (for a page that is shown rather than written)."""
    return "".join(pieces(screening, changes, compiled))


def report_bytes(
    screening: Screening, changes: Changes | None = None, compiled: Path | None = None
) -> Iterator[bytes]:
    """The report page as UTF-8 in chunks of about ``CHUNK`` characters, to be written as
    they come (:func:`~fhir_cohort.private_files.write_private_files`)."""
    batch: list[str] = []
    size = 0
    for piece in pieces(screening, changes, compiled):
        batch.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield "".join(batch).encode("utf-8")
            batch.clear()
            size = 0
    if batch:
        yield "".join(batch).encode("utf-8")


def _cell(node: NodeResult) -> str:
    """An inclusion in the list's table: its result, with a count or a score.

    >>> _cell(NodeResult("score", False, score=2)), _cell(NodeResult("age", True, shown=36))
    ('not-met (score 2)', 'met')
    """
    if node.kind == "at_least":
        return f"{node.result} ({len(node.met)}/{len(node.parts)})"
    scores = [n.score for n in (node, *node.parts) if n.kind == "score"]
    return f"{node.result} (score {scores[0]})" if scores else node.result


def criterion_rows(trial: Trial, key: str, node: NodeResult, depth: int = 0) -> list[dict]:
    """An inclusion's card rows: the rule, then its named sub-rules, in the trial's words."""
    window = (
        f" ({node.window[0].isoformat()} to {node.window[1].isoformat()})" if node.window else ""
    )
    row = {
        "label": trial.label(key) + window,
        "depth": depth,
        "result": node.result,
        "shown": _cell(node),
        "evidence": evidence_rows(node.evidence),
    }
    return [
        row,
        *(
            r
            for part in node.parts
            if part.id
            for r in criterion_rows(trial, part.id, part, depth + 1)
        ),
    ]


def write_report(screening: Screening, path: Path, changes: Changes | None = None) -> None:
    write_private(path, report_bytes(screening, changes))
