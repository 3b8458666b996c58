"""The terminal summary: the funnel, the top of the list, the data problems."""

from __future__ import annotations

from ..criteria.results import STATUSES
from ..pipeline import Screening
from .candidates import flagged

TOP = 10


def summary(screening: Screening, out_dir: str | None = None) -> str:
    funnel = screening.funnel.to_dict()
    status = funnel["status"]
    lines = [
        f"fhir-cohort: {screening.trial.id} as of {screening.as_of.isoformat()}",
        f"  patients read        {funnel['patients_read']:>7}",
        f"  lupus evidence       {funnel['lupus_evidence']:>7}",
    ]
    for key in ("age", "acr", "activity"):
        lines.append(f"  passed {key:<13} {funnel['inclusion'][key]['passed']:>7}")
    for key, counts in funnel["exclusions"].items():
        hits = ", ".join(f"{n} {r}" for r, n in counts.items() if r != "clear")
        if hits:
            lines.append(f"  {key:<20} {hits}")
    lines.append("  " + "  ".join(f"{s}: {status[s]}" for s in (*STATUSES, "not-a-candidate")))
    if screening.candidates:
        lines.append("")
        lines.append(f"  {'rank':>4}  {'patient':<36} {'status':<13} {'ACR':>3} {'act':>4}  notes")
        for candidate in screening.candidates[:TOP]:
            result = candidate.result
            notes = "; ".join(flagged(candidate))
            if result.eligible_from:
                notes = f"eligible from {result.eligible_from.isoformat()}" + (
                    f"; {notes}" if notes else ""
                )
            lines.append(
                f"  {candidate.rank:>4}  {result.patient[:36]:<36} {result.status:<13} "
                f"{result.acr.count:>3} {result.activity.score:>4}  {notes}"
            )
        if len(screening.candidates) > TOP:
            lines.append(f"  ... {len(screening.candidates) - TOP} more in candidates.csv")
    retrieval = screening.retrieval
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
        lines.append(f"  wrote {out_dir}/candidates.json, candidates.csv and report.html")
    return "\n".join(lines)
