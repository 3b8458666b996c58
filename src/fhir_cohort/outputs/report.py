"""report.html: the coordinators' view of one screen, one self-contained file.

Rule: everything shown comes from the finished screening and is escaped by
Jinja2's autoescape (names and code texts come from the server and may hold
markup); no CDN, no network, no script from outside the file. The funnel is
an inline SVG; filtering by status is a few lines of inline JavaScript that
only toggles rows, so the page reads the same printed or without scripts.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..criteria.results import STATUSES
from ..pipeline import Screening
from . import write_private
from .candidates import candidate_dict, flagged, to_verify

BAR_HEIGHT, BAR_GAP, CHART_WIDTH, LABEL_WIDTH = 22, 6, 640, 230


def funnel_bars(screening: Screening) -> list[dict]:
    """The funnel as labelled bars (label, count, width in px) for the SVG."""
    funnel = screening.funnel.to_dict()
    rows = [
        ("patients read", funnel["patients_read"]),
        ("lupus evidence", funnel["lupus_evidence"]),
    ]
    rows += [(f"passed {k}", v["passed"]) for k, v in funnel["inclusion"].items()]
    rows += [
        (f"{k}: {r}", n)
        for k, counts in funnel["exclusions"].items()
        for r, n in counts.items()
        if r != "clear" and n
    ]
    rows += [(s, funnel["status"][s]) for s in (*STATUSES, "not-a-candidate")]
    largest = max((n for _, n in rows), default=1) or 1
    span = CHART_WIDTH - LABEL_WIDTH - 60
    return [
        {
            "label": label,
            "count": n,
            "y": i * (BAR_HEIGHT + BAR_GAP),
            "width": max(1, round(span * n / largest)) if n else 0,
        }
        for i, (label, n) in enumerate(rows)
    ]


def render(screening: Screening) -> str:
    environment = Environment(
        loader=PackageLoader("fhir_cohort.outputs", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    bars = funnel_bars(screening)
    candidates = [
        {
            **candidate_dict(c),
            "flagged": flagged(c),
            "to_verify": to_verify(c),
            "acr_near_miss": (
                f"{c.result.acr.count} of 11: missing {', '.join(c.result.acr.missing)}"
                if c.result.acr.result != "met"
                else ""
            ),
        }
        for c in screening.candidates
    ]
    return environment.get_template("report.html.j2").render(
        trial=screening.trial,
        as_of=screening.as_of.isoformat(),
        bars=bars,
        chart={
            "width": CHART_WIDTH,
            "label": LABEL_WIDTH,
            "bar": BAR_HEIGHT,
            "height": len(bars) * (BAR_HEIGHT + BAR_GAP),
        },
        candidates=candidates,
        statuses=STATUSES,
        notes=screening.data_quality.to_list(),
        retrieval=screening.retrieval,
    )


def write_report(screening: Screening, path: Path) -> None:
    write_private(path, render(screening).encode("utf-8"))
