"""The terminal: the summary, what changed since the last run, problems, decisions.

Rule: plain text for people and for cron mail. :func:`problems` is all that
``--quiet`` prints, so a scheduled run is silent unless something is wrong.
Every line goes through :func:`fhir_cohort.text.printable`: ids, names, notes
and messages come from the data and must not move the cursor or split lines.
"""

from __future__ import annotations

from itertools import islice

from ..changes import Changes
from ..criteria.results import STATUSES
from ..listing import headers
from ..pipeline import Screening
from ..reviews import Review
from ..text import printable
from .candidates import acted_on, flagged, work_order

TOP = 10
CHANGES_SHOWN = 10


def problems(screening: Screening, pull: str | None = None) -> list[str]:
    """What is wrong with a run: input not read, an incremental pull refused."""
    out = []
    missing = screening.missing_data()
    if missing:
        out.append(
            "partial data: "
            + ", ".join(f"{n} {code}" for code, n in missing.items())
            + "; the outputs say what could not be read and the run is not used as the "
            "baseline of the next one"
        )
    if pull and pull.startswith("full (the server refused"):
        out.append(f"incremental pull not possible, pulled everything: {pull[6:-1]}")
    unreadable = screening.unreadable_data()
    if unreadable:
        doubted = sum(h.doubted for h in headers(screening.candidates))
        out.append(
            "records that cannot be read for certain: "
            + ", ".join(f"{n} {code}" for code, n in unreadable.items())
            + f"; they never count in a patient's favour ({doubted} listed patient"
            + ("s need" if doubted != 1 else " needs")
            + " review because of them; see data_quality)"
        )
    return [printable(line) for line in out]


def change_lines(changes: Changes) -> list[str]:
    """What changed since the previous run, for the terminal."""
    if changes.previous is None:
        lines = ["  first recorded run of this screen: nothing to compare with yet"]
    else:
        previous = changes.previous
        lines = [
            f"  since the run of {previous['finished_at']} (as of {previous['as_of']}): "
            f"{len(changes.new)} new, {len(changes.status_changed)} changed, "
            f"{len(changes.dropped)} dropped out"
            + (f", {len(changes.set_aside)} set aside by review" if changes.set_aside else "")
        ]
    for title, items in (
        ("new", changes.new),
        ("new evidence", changes.reconsider),
        ("changed", changes.status_changed),
        ("dropped out", changes.dropped),
        ("eligible soon", changes.eligible_soon),
    ):
        for change in items[:CHANGES_SHOWN]:
            if title == "dropped out":
                status = f"was {change.before}"
            elif title == "eligible soon":
                status = f"from {change.eligible_from}"
            else:
                status = str(change.after)
            lines.append(f"    {title:<13} {change.patient:<36} {status}: {change.why}")
        if len(items) > CHANGES_SHOWN:
            lines.append(f"    ... {len(items) - CHANGES_SHOWN} more {title} in report.html")
    return [printable(line) for line in lines]


def review_lines(reviews: list[Review], trial: str) -> list[str]:
    """The audit trail of review decisions, oldest first."""
    if not reviews:
        return [f"no review decisions recorded for {trial}"]
    lines = [f"{'when':<20}  {'patient':<36}  {'decision':<12}  {'by':<16}  note"]
    lines += [
        f"{r.at:<20}  {r.patient:<36}  {r.status:<12}  {r.by[:16]:<16}  {r.note}" for r in reviews
    ]
    return [printable(line) for line in lines]


def top_lines(screening: Screening, changes: Changes | None) -> list[str]:
    """The first candidates to contact (nobody already acted on), full ids, then a count
    of the rest and of those already acted on."""
    patients = [h.patient for h in headers(screening.candidates)]
    waiting = sum(acted_on(patient, changes) is None for patient in patients)
    order = work_order(screening.candidates, changes)
    top = list(islice(order, min(TOP, waiting)))  # only these are read back
    width = max([len("patient"), *(len(c.result.patient) for c in top)])
    lines = [f"  {'rank':>4}  {'patient':<{width}} {'status':<13} {'met':>5}  notes"]
    for candidate in top:
        result = candidate.result
        notes = "; ".join(flagged(candidate, screening.trial))
        if result.eligible_from:
            notes = f"eligible from {result.eligible_from.isoformat()}" + (
                f"; {notes}" if notes else ""
            )
        met = f"{sum(bool(n.value) for n in result.inclusions.values())}/{len(result.inclusions)}"
        patient = f"{result.patient:<{width}}"
        lines.append(f"  {candidate.rank:>4}  {patient} {result.status:<13} {met:>5}  {notes}")
    if waiting > TOP:
        lines.append(f"  ... {waiting - TOP} more to contact in candidates.csv")
    acted = len(patients) - waiting
    if acted:
        lines.append(f"  {acted} already acted on (review decisions), listed after them")
    return lines


def summary(
    screening: Screening,
    out_dir: str | None = None,
    changes: Changes | None = None,
    pull: str | None = None,
) -> str:
    funnel = screening.funnel.to_dict()
    status = funnel["status"]
    lines = [
        f"fhir-cohort: {screening.trial.id} as of {screening.as_of.isoformat()}",
        f"  {'patients read':<36} {funnel['patients_read']:>7}",
    ]
    for step in funnel["steps"]:
        lines.append(f"  {step['label']:<36} {step['count']:>7}")
    for key, counts in funnel["exclusions"].items():
        hits = ", ".join(f"{n} {r}" for r, n in counts.items() if r != "clear")
        if hits:
            lines.append(f"  {screening.trial.label(key):<36} {hits}")
    lines.append("  " + "  ".join(f"{s}: {status[s]}" for s in (*STATUSES, "not-a-candidate")))
    if screening.candidates:
        lines.append("")
        lines += top_lines(screening, changes)
    if changes is not None:
        lines.append("")
        lines += change_lines(changes)
    retrieval = screening.retrieval
    if pull:
        lines.append("")
        lines.append(f"  pull: {pull}")
    if retrieval.get("http_requests"):
        fetched = retrieval.get("patients_fetched") or funnel["patients_read"] or 1
        lines.append("")
        lines.append(
            f"  HTTP requests: {retrieval['http_requests']} for {fetched} patients "
            f"fetched ({retrieval['http_requests'] / fetched:.2f} per patient), "
            f"{retrieval.get('http_retries', 0)} retries"
        )
    problems = screening.data_quality.to_list()
    if problems:
        lines.append("")
        lines.append("  data quality: " + ", ".join(f"{p['count']} {p['code']}" for p in problems))
    if out_dir:
        lines.append("")
        lines.append(
            f"  wrote {out_dir}/report.html, candidates.json, candidates.csv and group.json"
        )
    return "\n".join(printable(line) for line in lines)
