"""candidates.json and candidates.csv: the ranked list with its evidence.

The JSON is the complete record (funnel, data-quality notes, every criterion
with its evidence); the CSV is the screening log a coordinator pastes into a
spreadsheet, one row per listed candidate.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson

from .. import __version__
from ..criteria.results import MET, UNKNOWN, WASHOUT
from ..pipeline import Screening
from ..rank import Candidate
from . import write_private

CSV_COLUMNS = (
    "rank",
    "patient_id",
    "name",
    "status",
    "eligible_from",
    "score",
    "age",
    "acr_count",
    "acr_met",
    "acr_missing",
    "activity",
    "activity_score",
    "latest_activity_evidence",
    "exclusions_flagged",
    "to_verify",
    "as_of",
    "trial",
)


def candidate_dict(candidate: Candidate) -> dict:
    return {"rank": candidate.rank, "score": candidate.score, **candidate.result.to_dict()}


def screening_dict(screening: Screening) -> dict:
    trial = screening.trial
    return {
        "trial": trial.id,
        "trial_title": trial.title,
        "trial_version": trial.version,
        "as_of": screening.as_of.isoformat(),
        "generator": f"fhir-cohort {__version__}",
        "funnel": screening.funnel.to_dict(),
        "retrieval": screening.retrieval,
        "data_quality": screening.data_quality.to_list(),
        "candidates": [candidate_dict(c) for c in screening.candidates],
    }


def write_json(screening: Screening, path: Path) -> None:
    write_private(path, orjson.dumps(screening_dict(screening), option=orjson.OPT_INDENT_2))


def flagged(candidate: Candidate) -> list[str]:
    """Exclusions that are not clear, as short phrases ('biologic_washout until 2026-08-28')."""
    out = []
    for key, finding in candidate.result.exclusions.items():
        if finding.result == WASHOUT:
            out.append(f"{key} until {finding.until.isoformat()}")  # type: ignore[union-attr]
        elif finding.result != "clear":
            out.append(f"{key}: {finding.result}")
    return out


def to_verify(candidate: Candidate) -> list[str]:
    """What the coordinator should check in the chart."""
    result = candidate.result
    items = []
    if result.age.result == UNKNOWN:
        items.append("date of birth")
    if result.acr.result != MET:
        items.append(
            f"ACR criteria ({result.acr.count} of 11 on record; missing: "
            f"{', '.join(result.acr.missing)})"
        )
    if result.activity.result != MET:
        items.append(f"disease activity (SLEDAI-2K labs {result.activity.result})")
    items += [
        f"{key} ({finding.result})"
        for key, finding in result.exclusions.items()
        if finding.result == "review"
    ]
    return items


def csv_row(candidate: Candidate, screening: Screening) -> dict:
    result = candidate.result
    latest = result.activity.latest_evidence
    return {
        "rank": candidate.rank,
        "patient_id": result.patient,
        "name": result.name or "",
        "status": result.status,
        "eligible_from": result.eligible_from.isoformat() if result.eligible_from else "",
        "score": candidate.score,
        "age": "" if result.age.age is None else result.age.age,
        "acr_count": result.acr.count,
        "acr_met": "; ".join(result.acr.met),
        "acr_missing": "; ".join(result.acr.missing),
        "activity": result.activity.result,
        "activity_score": result.activity.score,
        "latest_activity_evidence": latest.isoformat() if latest else "",
        "exclusions_flagged": "; ".join(flagged(candidate)),
        "to_verify": "; ".join(to_verify(candidate)),
        "as_of": screening.as_of.isoformat(),
        "trial": screening.trial.id,
    }


def _safe_cell(value: object) -> object:
    """Neutralise spreadsheet formulas in text that came from the data (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_csv(screening: Screening, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for candidate in screening.candidates:
        writer.writerow({k: _safe_cell(v) for k, v in csv_row(candidate, screening).items()})
    write_private(path, buffer.getvalue().encode("utf-8"))
