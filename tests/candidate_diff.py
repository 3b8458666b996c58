"""Two candidates.json outputs compared patient by patient, and the rule a server screen keeps.

The reference is a screen of the same data from files. A patient's judgement
is their ``status`` and ``eligible_from``; a patient a list does not name is
``not-a-candidate``. The rule for a screen of a server (the project's "never
silently different" and "unsure is never in the patient's favour"):

- every patient is judged exactly as the reference judges them, or is listed
  as ``needs-review`` with a reason, and then the run exits 4 (partial data);
- no patient is ever eligible or in washout when the reference says otherwise;
- the run exits 0 only if the two lists are identical.

A "reason" is anything the candidate's record gives a coordinator to check
(an inclusion not met, an exclusion to review, a reason field, or a
data-quality note naming the patient); candidates.json has no field for why
a *server* made someone ``needs-review``, so this check is weak until it does.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_LISTED = "not-a-candidate"
REVIEW = "needs-review"
FAVOURABLE = frozenset({"eligible", "washout"})
EXIT_OK, EXIT_PARTIAL = 0, 4


@dataclass(frozen=True)
class Judgement:
    status: str
    eligible_from: str | None = None

    def __str__(self) -> str:
        return self.status + (f" from {self.eligible_from}" if self.eligible_from else "")


def judgements(output: dict | None) -> dict[str, Judgement]:
    """Each listed patient's judgement (none when the run wrote no output).

    >>> judgements({"candidates": [{"patient": "p1", "status": "washout",
    ...     "eligible_from": "2026-08-01"}]})
    {'p1': Judgement(status='washout', eligible_from='2026-08-01')}
    """
    if output is None:
        return {}
    return {
        c["patient"]: Judgement(c["status"], c.get("eligible_from")) for c in output["candidates"]
    }


@dataclass(frozen=True)
class PatientDiff:
    patient: str
    reference: Judgement
    other: Judgement

    @property
    def review(self) -> bool:
        """The other screen sends the patient to a chart review instead."""
        return self.other.status == REVIEW

    @property
    def favourable(self) -> bool:
        """The other screen lets the patient look more eligible than the reference does."""
        return self.other.status in FAVOURABLE

    def line(self) -> str:
        return f"{self.patient}: {self.reference} by files, {self.other} by server"


def diff(reference: dict, other: dict | None) -> list[PatientDiff]:
    """The patients judged differently, by patient id.

    >>> ref = {"candidates": [{"patient": "a", "status": "eligible", "eligible_from": None},
    ...                       {"patient": "b", "status": "excluded", "eligible_from": None}]}
    >>> got = {"candidates": [{"patient": "a", "status": "needs-review", "eligible_from": None}]}
    >>> for d in diff(ref, got):
    ...     print(d.line())
    a: eligible by files, needs-review by server
    b: excluded by files, not-a-candidate by server
    """
    before, after = judgements(reference), judgements(other)
    missing = Judgement(NOT_LISTED)
    found = []
    for patient in sorted(before.keys() | after.keys()):
        was, now = before.get(patient, missing), after.get(patient, missing)
        if was != now:
            found.append(PatientDiff(patient, was, now))
    return found


def review_reasons(candidate: dict, output: dict) -> list[str]:
    """What a listed candidate's record gives a coordinator to check."""
    criteria = candidate.get("criteria") or {}
    reasons = [
        f"{name} {c.get('result')}"
        for name, c in criteria.items()
        if isinstance(c, dict) and c.get("result") not in (None, "met")
    ]
    reasons += [
        f"{name} {e.get('result')}"
        for name, e in (candidate.get("exclusions") or {}).items()
        if isinstance(e, dict) and e.get("result") == "review"
    ]
    reasons += [str(v) for k, v in candidate.items() if "reason" in k and v]
    reasons += [
        f"{note.get('code')}: {example.get('message')}"
        for note in output.get("data_quality") or ()
        for example in note.get("examples") or ()
        if candidate["patient"] in f"{example.get('where')} {example.get('message')}"
    ]
    return reasons


@dataclass(frozen=True)
class Outcome:
    """A server screen against the reference, in numbers."""

    exit_code: int
    written: bool  # the run wrote candidates.json
    right: int  # listed by either screen and judged the same
    review: int  # judged differently, sent to needs-review by the server
    wrong: int  # judged differently otherwise (missing, extra, another status or date)
    favourable: int  # of the wrong: eligible or washout on the server only


def outcome(reference: dict, other: dict | None, exit_code: int) -> Outcome:
    differences = diff(reference, other)
    listed = judgements(reference).keys() | judgements(other).keys()
    review = sum(d.review for d in differences)
    return Outcome(
        exit_code=exit_code,
        written=other is not None,
        right=len(listed) - len(differences),
        review=review,
        wrong=len(differences) - review,
        favourable=sum(d.favourable for d in differences),
    )


def rule_breaches(reference: dict, other: dict | None, exit_code: int) -> list[str]:
    """Every way a server screen breaks the rule (empty: it keeps it)."""
    if other is None:
        return [f"the run exited {exit_code} and wrote no candidates.json"]
    differences = diff(reference, other)
    listed = {c["patient"]: c for c in other["candidates"]}
    breaches = [f"favourable: {d.line()}" for d in differences if d.favourable]
    breaches += [
        f"judged differently: {d.line()}" for d in differences if not d.favourable and not d.review
    ]
    breaches += [
        f"needs-review without a reason: {d.line()}"
        for d in differences
        if d.review and not review_reasons(listed[d.patient], other)
    ]
    if differences and exit_code != EXIT_PARTIAL:
        breaches.append(f"{len(differences)} patients differ but the run exited {exit_code}, not 4")
    if not differences and exit_code not in (EXIT_OK, EXIT_PARTIAL):
        breaches.append(f"the lists are identical but the run exited {exit_code}")
    return breaches


class RuleBroken(AssertionError):
    """A server screen broke the rule in the way recorded for today's tool (an expected failure)."""
