"""candidates.json and candidates.csv: the ranked list with its evidence.

The CSV lists candidates in work order: those not yet acted on first, then those
whose latest review decision acts on or closes the case (:data:`ACTED_ON`).

The JSON is the complete record (funnel, data-quality notes, every criterion
with its evidence, the changes since the previous run and each patient's
latest review decision); the CSV is the screening log, one row per candidate,
with column names a REDCap data import accepts (lower case, digits and
underscores, starting with a letter, at most 26 characters, the record id
first). Text from the data can neither split a row (line breaks and control
characters become spaces) nor start a spreadsheet formula (prefixed ``'``).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import date

import orjson

from .. import __version__
from ..changes import Changes, flags
from ..criteria.language import Trial
from ..criteria.rank_terms import Ranked
from ..criteria.tree import NodeResult
from ..listing import Candidates, entries, picked
from ..listing import candidate_dict as candidate_dict
from ..pipeline import Screening
from ..reviews import REVIEW_STATUSES, SET_ASIDE
from ..text import printable

CSV_COLUMNS = (
    "record_id",
    "screen_rank",
    "patient_name",
    "screen_status",
    "eligible_from",
    "rank_score",
    "age",
    "inclusions_met",
    "inclusions_open",
    "latest_evidence_date",
    "exclusions_flagged",
    "to_verify",
    "needs_review_because",
    "review_status",
    "review_date",
    "review_by",
    "change_since_last",
    "screen_as_of",
    "trial_id",
)


# Decisions that close a case or act on it: the patient leaves the "to contact" order.
# Only "reopened" (a newer record undoing the one before) puts a patient back.
ACTED_ON = frozenset(REVIEW_STATUSES) - {"reopened"}
CSV_ROWS = 1000  # rows of candidates.csv written at a time


def acted_on(patient: str, changes: Changes | None) -> str | None:
    """The decision that took ``patient`` out of the "to contact" order, or None.

    A patient set aside (declined, not eligible) returns to the order when evidence
    appears that was not on record at the decision: the change since the last run
    says so.
    """
    state = changes.reviews.get(patient) if changes else None
    if state is None or state.review.status not in ACTED_ON:
        return None
    if state.review.status in SET_ASIDE and state.new_evidence:
        return None
    return state.review.status


def work_order(candidates: Candidates, changes: Changes | None) -> Iterator[Ranked]:
    """The candidates as a coordinator works them: not yet acted on first, then those
    already acted on, each part in rank order (read back one at a time)."""
    yield from picked(candidates, lambda patient: acted_on(patient, changes) is None)
    yield from picked(candidates, lambda patient: acted_on(patient, changes) is not None)


UCUM_WORDS = {"degF": "°F", "degC": "°C", "in_i": "in", "lb_av": "lb", "ft_i": "ft"}
_UCUM = re.compile(r"\[([A-Za-z_]+)\]")
_UP_TO = re.compile(r"\(reference\s*[–-]\s*([^()–]+)\)")
_FROM = re.compile(r"\(reference\s+([^()–]+?)\s*[–-]\s*\)")
_BETWEEN = re.compile(r"\(reference\s+([^()–]+?)\s*[–]\s*([^()–]+)\)")


def plain_value(text: str) -> str:
    """A value as sent, for people: UCUM annotations without brackets and reference
    ranges that cannot read as a negative number.

    >>> plain_value("85 [IU]/mL (reference –30 [IU]/mL)")
    '85 IU/mL (reference: up to 30 IU/mL)'
    >>> plain_value("70 mg/dL (reference 90 mg/dL–180 mg/dL)"), plain_value("101.3 [degF]")
    ('70 mg/dL (reference: 90 mg/dL to 180 mg/dL)', '101.3 °F')
    >>> plain_value("5 (reference 2–)")
    '5 (reference: 2 or more)'
    """
    text = _UCUM.sub(lambda m: UCUM_WORDS.get(m[1], m[1]), text)
    text = _UP_TO.sub(lambda m: f"(reference: up to {m[1].strip()})", text)
    text = _FROM.sub(lambda m: f"(reference: {m[1].strip()} or more)", text)
    return _BETWEEN.sub(lambda m: f"(reference: {m[1].strip()} to {m[2].strip()})", text)


def reasons(candidate: Ranked, trial: Trial) -> list[str]:
    """Why a patient needs review, in the trial's words: a reason that starts with an
    exclusion's id starts with its label, and values read plainly (:func:`plain_value`).
    """
    out = []
    for reason in candidate.result.reasons:
        key, _, rest = reason.partition(" ")
        if key in trial.spec.exclusions and rest:
            reason = f"{trial.label(key)} {rest}"
        out.append(plain_value(reason))
    return out


def _head(screening: Screening, changes: Changes | None) -> dict:
    """candidates.json but its candidates."""
    trial = screening.trial
    return {
        "trial": trial.id,
        "trial_title": trial.title,
        "trial_version": trial.version,
        "as_of": screening.as_of.isoformat(),
        "generator": f"fhir-cohort {__version__}",
        "funnel": screening.funnel.to_dict(),
        "retrieval": {
            **screening.retrieval,
            **({"plan": screening.plan} if screening.plan else {}),
        },
        "data_quality": screening.data_quality.to_list(),
        "changes": changes.to_dict() if changes else None,
    }


def _entries(screening: Screening, changes: Changes | None) -> Iterator[dict]:
    """candidates.json's candidates, one at a time, in rank order."""
    reviews = changes.reviews if changes else {}
    for patient, _, candidate in entries(screening.candidates):
        review = reviews.get(patient)
        yield {**candidate, "review": review.to_dict() if review else None}


def screening_dict(screening: Screening, changes: Changes | None = None) -> dict:
    """candidates.json, whole."""
    return {**_head(screening, changes), "candidates": list(_entries(screening, changes))}


def json_chunks(screening: Screening, changes: Changes | None = None) -> Iterator[bytes]:
    """candidates.json as orjson writes :func:`screening_dict` indented, a candidate at a
    time, so the list is never whole in memory (a common-disease trial lists thousands).
    The candidates come last, so the head is written first and left open; orjson writes
    no raw line break inside a string, so a candidate is indented by its line breaks.
    """
    head = orjson.dumps(_head(screening, changes), option=orjson.OPT_INDENT_2)
    yield head[:-2] + b',\n  "candidates": ['
    written = 0
    for entry in _entries(screening, changes):
        indented = orjson.dumps(entry, option=orjson.OPT_INDENT_2).replace(b"\n", b"\n    ")
        yield (b",\n    " if written else b"\n    ") + indented
        written += 1
    yield b"\n  ]\n}" if written else b"]\n}"


def json_bytes(screening: Screening, changes: Changes | None = None) -> bytes:
    """candidates.json, whole."""
    return b"".join(json_chunks(screening, changes))


def flagged(candidate: Ranked, trial: Trial) -> list[str]:
    """An age outside the range and exclusions that are not clear, in the trial's words
    ("Other biologics in the last 6 months until 2026-08-28")."""
    return flags(candidate.result, trial.label, ": ")


def shortfall(trial: Trial, key: str, node: NodeResult) -> str:
    """An inclusion that is not met, in the trial's words ("… (3 of 5 on record;
    missing: …)" for an ``at_least``, else its result).
    """
    label = trial.label(key)
    if node.kind == "at_least":
        missing = [trial.label(p.id) for p in node.parts if p.id and not p.value]
        return (
            f"{label} ({len(node.met)} of {len(node.parts)} on record; "
            f"missing: {', '.join(missing)})"
        )
    return f"{label} ({node.result})"


def to_verify(candidate: Ranked, trial: Trial) -> list[str]:
    """What the coordinator should check in the chart."""
    result = candidate.result
    items = [
        shortfall(trial, key, node)
        for key, node in result.inclusions.items()
        if node.value is not True
    ]
    items += [
        f"{trial.label(key)} (a record needs review)"
        for key, finding in result.exclusions.items()
        if finding.result == "review"
    ]
    return items


def latest_evidence(candidate: Ranked) -> date | None:
    """The date of the newest evidence behind the inclusions, or None."""
    dates = [d for node in candidate.result.inclusions.values() if (d := node.latest_evidence())]
    return max(dates, default=None)


def csv_row(candidate: Ranked, screening: Screening, changes: Changes | None = None) -> dict:
    result = candidate.result
    latest = latest_evidence(candidate)
    review = changes.reviews.get(result.patient) if changes else None
    return {
        "record_id": result.patient,
        "screen_rank": candidate.rank,
        "patient_name": result.name or "",
        "screen_status": result.status,
        "eligible_from": result.eligible_from.isoformat() if result.eligible_from else "",
        "rank_score": candidate.score,
        "age": "" if result.age is None else result.age,
        "inclusions_met": "; ".join(k for k, n in result.inclusions.items() if n.value),
        "inclusions_open": "; ".join(
            shortfall(screening.trial, k, n)
            for k, n in result.inclusions.items()
            if n.value is not True
        ),
        "latest_evidence_date": latest.isoformat() if latest else "",
        "exclusions_flagged": "; ".join(flagged(candidate, screening.trial)),
        "to_verify": "; ".join(to_verify(candidate, screening.trial)),
        "needs_review_because": "; ".join(reasons(candidate, screening.trial)),
        "review_status": review.review.status if review else "",
        "review_date": review.review.at[:10] if review else "",
        "review_by": review.review.by if review else "",
        "change_since_last": changes.for_patient(result.patient) if changes else "",
        "screen_as_of": screening.as_of.isoformat(),
        "trial_id": screening.trial.id,
    }


def _safe_cell(value: object) -> object:
    """Text from the data made safe for a spreadsheet: line breaks and other control
    characters become spaces (no cell can split its row), then a cell that would start
    a formula is prefixed with ``'`` (CSV injection).

    >>> _safe_cell("Ann\\r=cmd|' /C calc'!A0"), _safe_cell("=1+1"), _safe_cell(" -2"), _safe_cell(3)
    ("Ann =cmd|' /C calc'!A0", "'=1+1", "' -2", 3)
    """
    if not isinstance(value, str):
        return value
    value = printable(value)
    if value.lstrip()[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def csv_chunks(screening: Screening, changes: Changes | None = None) -> Iterator[bytes]:
    """candidates.csv, the screening log (text from the data cannot start a formula), in
    chunks of ``CSV_ROWS`` rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for count, candidate in enumerate(work_order(screening.candidates, changes), 1):
        writer.writerow(
            {k: _safe_cell(v) for k, v in csv_row(candidate, screening, changes).items()}
        )
        if not count % CSV_ROWS:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def csv_bytes(screening: Screening, changes: Changes | None = None) -> bytes:
    """candidates.csv, whole."""
    return b"".join(csv_chunks(screening, changes))
