"""The evaluator: one patient's facts + a trial + an as-of date -> a result.

``evaluate`` is pure: no I/O, no clock, no globals. Evidence dated after the
as-of date is ignored as if it did not exist yet. Every rule of the trial
vocabulary is evaluated to True (met), False (not met) or None (cannot tell),
and each answer carries the facts it rests on.

Records that could not be read (a fact with ``unreadable`` reasons) take part
through one mechanism: a rule they may satisfy (by their code, or any rule of
their type when their code cannot be read) gets a match whose result is None,
whose evidence says why. None never meets an inclusion (unknown) and makes an
exclusion ``review``; a washout such a record could start or extend is
``review``. A patient with records that could not be read at all (``doubts``)
can be neither eligible nor in a washout; one whose only pool evidence cannot
be read is listed as needs-review, not dropped as not-a-candidate. Each
needs-review patient gets ``reasons`` in plain words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

from ..normalise.dates import add_months, age_on, date_bounds
from ..normalise.facts import ConditionFact, ExposureFact, LabFact, PatientFacts, ProcedureFact
from ..quality import Note
from . import labtests
from .results import (
    CLEAR,
    ELIGIBLE,
    EXCLUDED,
    MET,
    NEEDS_REVIEW,
    NOT_A_CANDIDATE,
    NOT_MET,
    REVIEW,
    UNKNOWN,
    WASHOUT,
    AcrResult,
    ActivityResult,
    AgeResult,
    Evidence,
    Finding,
    PatientResult,
)
from .trial import AnyRule, ConditionRule, LabRule, LabTest, ProcedureRule, Rule, Trial, Washout

CURRENT_STATUSES = frozenset({"active", "recurrence", "relapse"})
_SEVERITY = {CLEAR: 0, REVIEW: 1, EXCLUDED: 2}

Window = tuple[date, date]
Fact = ConditionFact | LabFact | ProcedureFact


@dataclass(frozen=True, slots=True)
class Match:
    """One fact that satisfies a rule (result True) or might (None); ``doubt`` when it
    might because its record could not be read (its date may then be any day)."""

    date: date | None
    result: bool | None
    evidence: Evidence
    doubt: bool = False


@dataclass(slots=True)
class Outcome:
    """A rule's answer: its matches, and whether any counting fact was examined at all.

    ``seen`` tells "tested and not met" from "nothing to test": activity with
    no counting lab in the window is unknown, not "not met".
    """

    matches: list[Match] = field(default_factory=list)
    seen: bool = False

    def value(self) -> bool | None:
        if any(m.result for m in self.matches):
            return True
        return None if self.matches else False

    @property
    def doubtful(self) -> bool:
        """Does a record that could not be read leave this rule open?"""
        return any(m.doubt for m in self.matches)

    def evidence(self) -> tuple[Evidence, ...]:
        wanted = self.value()
        chosen = sorted(  # by resource first, so the same day reads the same in any order
            (m for m in self.matches if m.result is wanted), key=lambda m: m.evidence.resource
        )
        chosen.sort(key=lambda m: m.date or date.min, reverse=True)  # stable: newest first
        return tuple(dict.fromkeys(m.evidence for m in chosen))

    def on_occasions(self, occasions: int) -> Outcome:
        """Re-read as "on at least N distinct dated days" (undated facts never count).

        When unreadable results could make up the days, the answer is unknown;
        otherwise too few days is not met (no matches).
        """
        if occasions <= 1:
            return self
        hits = [m for m in self.matches if m.result and m.date]
        if len({m.date for m in hits}) >= occasions:
            return Outcome(hits, self.seen)
        unreadable = [m for m in self.matches if m.result is None and m.date]
        anyday = [m for m in self.matches if m.doubt and m.date is None]  # each may be a new day
        if len({m.date for m in hits + unreadable}) + len(anyday) >= occasions:
            unreadable += anyday
            return Outcome(
                [*unreadable, *(Match(m.date, None, m.evidence) for m in hits)], self.seen
            )
        return Outcome([], self.seen)


def _in(day: date | None, window: Window | None) -> bool:
    return window is None or (day is not None and window[0] <= day <= window[1])


def _may_be_in(fact: Fact, window: Window | None) -> bool:
    """In the window, or unreadable with no readable date (it may be any day)."""
    return _in(fact.date, window) or (bool(fact.unreadable) and fact.date is None)


UNREADABLE = "cannot be read: "  # how the evidence of an unreadable record begins its note


def _why(fact: Fact | ExposureFact) -> str:
    """Why a fact's record cannot be read, for its evidence."""
    reasons = "; ".join(fact.unreadable)
    return f"{UNREADABLE}{reasons[:300]}"


class _Patient:
    """One evaluation: the facts as they stood on ``as_of``, and the notes found."""

    def __init__(self, facts: PatientFacts, as_of: date):
        self.facts = facts
        self.as_of = as_of
        self.notes: dict[tuple[str, str], Note] = {}

        def known(items: Iterable):
            return tuple(f for f in items if f.date is None or f.date <= as_of)

        self.conditions = known(facts.conditions)
        self.labs = known(facts.labs)
        self.procedures = known(facts.procedures)
        self._lab_keys = [(f, frozenset(c.key for c in f.codes)) for f in self.labs]
        self._any_code_labs = tuple(f for f in self.labs if f.any_code)
        self._lab_cache: dict[str, tuple[LabFact, ...]] = {}

    def note(self, note: Note | None) -> None:
        if note is not None:
            self.notes.setdefault((note.code, note.where), note)

    def window(self, days: int | None) -> Window | None:
        return None if days is None else (self.as_of - timedelta(days=days), self.as_of)

    def labs_of(self, lab: LabTest) -> tuple[LabFact, ...]:
        """This patient's results of one lab test (any of its codes), computed once."""
        if lab.name not in self._lab_cache:
            valueset = lab.valueset
            if valueset.prefixes or valueset.excluded:
                found = tuple(f for f in self.labs if valueset.match(f.codes) or f.any_code)
            else:  # the usual LOINC list: a set intersection per result
                found = tuple(
                    f for f, keys in self._lab_keys if not valueset.codes.isdisjoint(keys)
                )
                found += tuple(f for f in self._any_code_labs if f not in found)
            self._lab_cache[lab.name] = found
        return self._lab_cache[lab.name]

    # -- rules -------------------------------------------------------------
    def rule(self, rule: Rule, window: Window | None = None) -> Outcome:
        if isinstance(rule, AnyRule):
            outcome = Outcome()
            for part in rule.rules:
                found = self.rule(part, window)
                outcome.matches += found.matches
                outcome.seen |= found.seen
            return outcome.on_occasions(rule.occasions)
        window = self.window(rule.within_days) or window
        if isinstance(rule, ConditionRule):
            return self.condition_rule(rule, window)
        if isinstance(rule, ProcedureRule):
            return self.procedure_rule(rule, window)
        return self.lab_rule(rule, window)

    def condition_rule(self, rule: ConditionRule, window: Window | None) -> Outcome:
        outcome = Outcome()
        for fact in self.conditions:
            code = rule.valueset.match(fact.codes)
            if (code is None and not fact.any_code) or not _may_be_in(fact, window):
                continue
            current = _is_current(fact) if rule.use == "current" else True
            if current is False:
                continue
            if (
                rule.unless_followed_by
                and (fact.date is not None or not fact.unreadable)
                and self.followed(rule.unless_followed_by, fact.date)
            ):
                continue
            if fact.unreadable or current is None:
                why = _why(fact) if fact.unreadable else f"{UNREADABLE}{fact.status_unreadable}"
                outcome.matches.append(
                    Match(
                        fact.date,
                        None,
                        Evidence(
                            fact.source.reference,
                            fact.date,
                            code.key if code else None,
                            (code.display if code else None) or fact.text,
                            note=why,
                        ),
                        doubt=True,
                    )
                )
                continue
            assert code is not None
            outcome.matches.append(
                Match(
                    fact.date,
                    True,
                    Evidence(
                        fact.source.reference,
                        fact.date,
                        code.key,
                        code.display or fact.text,
                        f"clinicalStatus {fact.clinical_status or 'missing'}"
                        + (
                            f", verificationStatus {fact.verification_status}"
                            if fact.verification_status
                            else ""
                        ),
                    ),
                )
            )
        outcome.seen = any(m.result for m in outcome.matches)
        return outcome

    def procedure_rule(self, rule: ProcedureRule, window: Window | None) -> Outcome:
        outcome = Outcome()
        for fact in self.procedures:
            code = rule.valueset.match(fact.codes)
            if (code is None and not fact.any_code) or not _may_be_in(fact, window):
                continue
            evidence = Evidence(
                fact.source.reference,
                fact.date,
                code.key if code else None,
                (code.display if code else None) or fact.text,
                note=_why(fact) if fact.unreadable else None,
            )
            doubt = bool(fact.unreadable)
            outcome.matches.append(Match(fact.date, None if doubt else True, evidence, doubt))
        outcome.seen = any(m.result for m in outcome.matches)
        return outcome

    def followed(self, lab: LabTest, day: date | None) -> bool:
        """Is there any readable result of ``lab`` on or after ``day`` (any, if undated)?

        A result that cannot be read follows nothing: it may not count at all.
        """
        return any(
            not f.unreadable and (day is None or (f.date is not None and f.date >= day))
            for f in self.labs_of(lab)
        )

    def lab_rule(self, rule: LabRule, window: Window | None) -> Outcome:
        facts = [f for f in self.labs_of(rule.lab) if _may_be_in(f, window)]
        if rule.latest and facts:
            dated = [f for f in facts if f.date and not f.unreadable]
            if dated:
                last = max(f.date for f in dated)  # type: ignore[type-var]
                # ... and any result that cannot be read, unless it is certainly older
                facts = [
                    f
                    for f in facts
                    if f.date == last or (f.unreadable and (f.date is None or f.date >= last))
                ]
        outcome = Outcome()
        for fact in facts:
            if fact.unreadable:
                evidence = replace(_lab_evidence(rule, fact, True), note=_why(fact))
                outcome.matches.append(Match(fact.date, None, evidence, doubt=True))
                continue
            result, unit_problem = self.lab_test(rule, fact)
            self.note(unit_problem)
            # A counting result examined; a value whose unit cannot be read does not count.
            outcome.seen |= unit_problem is None
            if result is False:
                continue
            if rule.unless_followed_by and self.followed(rule.unless_followed_by, fact.date):
                continue
            outcome.matches.append(Match(fact.date, result, _lab_evidence(rule, fact, result)))
        return outcome

    def lab_test(self, rule: LabRule, fact: LabFact) -> tuple[bool | None, Note | None]:
        """One result against one rule, and the unit problem that stopped it, if any."""
        test, threshold, unit = rule.test, rule.threshold, rule.lab.unit
        if test == "positive":
            return labtests.positive(fact, rule.lab.viral_load), None
        if test == "present":
            return labtests.present(fact), None
        if test == "titer_at_least":
            assert threshold is not None
            titer = fact.titer
            return (titer.at_least(threshold) if titer else labtests.positive(fact)), None
        if test == "grade_at_least":
            grade = labtests.dipstick_grade(fact)
            return (None if grade is None else grade >= threshold), None  # type: ignore[operator]
        assert threshold is not None and unit is not None
        if test == "low":
            return labtests.low(fact, threshold, unit, fact.source.reference)
        value, note = labtests.in_unit(fact.quantity, unit, fact.source.reference)
        if value is None:
            return None, note
        op = {"above": ">", "below": "<", "at_least": ">="}[test]
        return labtests.compare(value.value, value.comparator, op, threshold), None

    # -- washouts ------------------------------------------------------------
    def washout(self, washout: Washout) -> Finding:
        last: tuple[date, ExposureFact, str] | None = None
        unreadable: list[tuple[date, ExposureFact, str | None]] = []
        for exposure in self.facts.exposures:
            matched = washout.medication.matches(exposure.codes, exposure.names)
            if not matched and not exposure.any_drug:
                continue
            day = _last_exposure(exposure, self.as_of)
            if day is None:
                continue
            if exposure.unreadable:
                unreadable.append((day, exposure, matched))
            elif last is None or day > last[0]:
                last = (day, exposure, matched)  # type: ignore[assignment]
        # A record that cannot be read and could start or extend the washout (read at its
        # worst: ongoing when its status or date leaves it open) makes it a review.
        doubts = [
            _exposure_evidence(exposure, day, matched, washout.months, self.as_of)
            for day, exposure, matched in unreadable
            if add_months(day, washout.months) > self.as_of and (last is None or day > last[0])
        ]
        if last is None:
            return Finding(REVIEW, tuple(doubts)) if doubts else Finding(CLEAR)
        day, exposure, matched = last
        until = add_months(day, washout.months)
        evidence = _exposure_evidence(exposure, day, matched, washout.months, self.as_of)
        running = until if until > self.as_of else None
        if doubts:
            return Finding(REVIEW, (*doubts, evidence), running)
        if running:
            return Finding(WASHOUT, (evidence,), until)
        return Finding(CLEAR, (evidence,))


def _exposure_evidence(
    exposure: ExposureFact, day: date, matched: str | None, months: int, as_of: date
) -> Evidence:
    until = add_months(day, months)
    span = (
        "ongoing"
        if exposure.ongoing or (exposure.end and exposure.end > as_of)
        else f"last exposure {day.isoformat()}"
    )
    note = f"+{months} calendar months = {until.isoformat()}"
    if exposure.unreadable:
        note = f"{_why(exposure)}; at worst +{months} calendar months = {until.isoformat()}"
    return Evidence(
        exposure.source.reference,
        day,
        matched or ("the drug cannot be read" if exposure.any_drug else None),
        ", ".join(exposure.names[:2]) or None,
        f"{exposure.status}; {span}",
        note,
    )


def _is_current(fact: ConditionFact) -> bool | None:
    """A current state? None when its clinicalStatus cannot be read, or when it has none
    and its date cannot be read (a dated Condition without a status is current)."""
    if fact.status_unreadable:
        return None
    if fact.clinical_status in CURRENT_STATUSES:
        return True
    if fact.clinical_status is None and fact.date is None and fact.unreadable:
        return None
    return fact.clinical_status is None and fact.date is not None


def _last_exposure(exposure: ExposureFact, as_of: date) -> date | None:
    """The last day of exposure as seen on ``as_of`` (capped at it), None if it lies after."""
    first = exposure.start or exposure.end
    if first is not None and first > as_of:
        return None
    if exposure.ongoing or exposure.end is None:
        return as_of
    return min(exposure.end, as_of)


def _lab_evidence(rule: LabRule, fact: LabFact, result: bool | None) -> Evidence:
    code = rule.lab.valueset.match(fact.codes)
    value = fact.describe_value()
    extras = []
    if fact.interpretation:
        extras.append("interpretation " + "/".join(sorted(fact.interpretation)))
    if fact.reference_low or fact.reference_high:
        low = fact.reference_low.describe() if fact.reference_low else ""
        high = fact.reference_high.describe() if fact.reference_high else ""
        extras.append(f"reference {low}–{high}")
    if extras:
        value = f"{value} ({'; '.join(extras)})" if value else "; ".join(extras)
    note = (
        None
        if result
        else f"cannot tell whether {rule.test.replace('_', ' ')} "
        + (
            f"{rule.threshold:g} {rule.lab.unit or ''}".strip()
            if rule.threshold is not None
            else ""
        )
    )
    return Evidence(
        fact.source.reference,
        fact.date,
        code.key if code else None,
        (code.display if code else None) or fact.text,
        value or None,
        note.strip() if note else None,
    )


def _age(facts: PatientFacts, trial: Trial, as_of: date) -> AgeResult:
    where = f"Patient/{facts.patient_id}"
    if facts.birth_date_unreadable:
        why = f"{UNREADABLE}{facts.birth_date_unreadable}"
        return AgeResult(UNKNOWN, None, (Evidence(where, None, value="birthDate", note=why),))
    bounds = date_bounds(facts.birth_date)
    if bounds is None:
        return AgeResult(UNKNOWN, None, (Evidence(where, None, value="no birthDate"),))
    youngest, oldest = age_on(bounds[1], as_of), age_on(bounds[0], as_of)
    low = trial.min_age if trial.min_age is not None else -1
    high = trial.max_age if trial.max_age is not None else 10**4
    evidence = (
        Evidence(
            where,
            None,
            value=f"birthDate {facts.birth_date}",
            note=None if youngest == oldest else f"age {youngest}–{oldest}",
        ),
    )
    age = oldest if youngest == oldest else None
    if youngest >= low and oldest <= high:
        return AgeResult(MET, age, evidence)
    if oldest < low or youngest > high:
        return AgeResult(NOT_MET, age, evidence)
    return AgeResult(UNKNOWN, age, evidence)


def _deceased(facts: PatientFacts, as_of: date) -> Finding:
    where = f"Patient/{facts.patient_id}"
    if facts.deceased_boolean:
        return Finding(EXCLUDED, (Evidence(where, None, value="deceasedBoolean true"),))
    if facts.deceased_date and facts.deceased_date <= as_of:
        return Finding(EXCLUDED, (Evidence(where, facts.deceased_date, value="deceasedDateTime"),))
    if facts.deceased_unreadable:
        why = f"{UNREADABLE}{facts.deceased_unreadable}"
        return Finding(REVIEW, (Evidence(where, None, value="deceased[x]", note=why),))
    return Finding(CLEAR)


def _finding(outcome: Outcome) -> Finding:
    value = outcome.value()
    result = MET if value else NOT_MET if value is False else UNKNOWN
    return Finding(result, outcome.evidence())


def _activity(patient: _Patient, trial: Trial) -> ActivityResult:
    spec = trial.activity
    window = (patient.as_of - timedelta(days=spec.window_days), patient.as_of)
    descriptors: dict[str, Finding] = {}
    assessed = False
    for descriptor in spec.descriptors:
        outcome = patient.rule(descriptor.rule, window)
        assessed |= outcome.seen
        descriptors[descriptor.id] = _finding(outcome)
    weights = {d.id: d.weight for d in spec.descriptors}
    score = sum(weights[k] for k, f in descriptors.items() if f.result == MET)
    acute = patient.rule(spec.met_by, window) if spec.met_by.rules else Outcome()
    acute_evidence = acute.evidence() if acute.value() else ()
    if acute_evidence or score >= spec.min_score:
        result = MET
    else:
        result = NOT_MET if assessed else UNKNOWN
    return ActivityResult(result, score, window[0], window[1], descriptors, weights, acute_evidence)


def _exclusion(patient: _Patient, rules: tuple[Rule, ...]) -> Finding:
    worst, evidence = CLEAR, []
    for rule in rules:
        answer = patient.rule(rule)
        value = answer.value()
        if value is False:
            continue
        outcome = (rule.outcome or EXCLUDED) if value else REVIEW
        found = answer.evidence()
        if _SEVERITY[outcome] > _SEVERITY[worst]:
            worst, evidence = outcome, list(found)
        elif outcome == worst:
            evidence += found
    return Finding(worst, tuple(dict.fromkeys(evidence)))


def evaluate(facts: PatientFacts, trial: Trial, as_of: date) -> PatientResult:
    """Decide one patient for one trial as of one day (pure)."""
    patient = _Patient(facts, as_of)
    age = _age(facts, trial, as_of)
    outcomes = {c.id: patient.rule(c.rule) for c in trial.acr}
    criteria = {k: _finding(outcome) for k, outcome in outcomes.items()}
    met = tuple(k for k, f in criteria.items() if f.result == MET)
    acr = AcrResult(MET if len(met) >= trial.acr_min_met else NOT_MET, met, criteria)
    pool = patient.rule(trial.pool)
    candidate = bool(pool.value()) or acr.result == MET
    # Records that cannot be read may hide pool evidence or the missing criteria.
    open_criteria = tuple(k for k, o in outcomes.items() if o.value() is None and o.doubtful)
    pool_open = not candidate and (
        pool.value() is None or len(met) + len(open_criteria) >= trial.acr_min_met
    )
    outside_pool = PatientResult(
        patient=facts.patient_id,
        name=facts.name,
        as_of=as_of,
        candidate=False,
        status=NOT_A_CANDIDATE,
        eligible_from=None,
        age=age,
        acr=acr,
        activity=None,
        exclusions={},
        notes=(*facts.notes, *patient.notes.values()),
    )
    if not candidate and not pool_open:
        # Not listed and not counted past the pool: activity and exclusions are not needed.
        return outside_pool
    activity = _activity(patient, trial)
    exclusions = {key: _exclusion(patient, rules) for key, rules in trial.exclusions.items()}
    for washout in trial.washouts:
        exclusions[washout.id] = patient.washout(washout)
    exclusions["deceased"] = _deceased(facts, as_of)

    results = {f.result for f in exclusions.values()}
    running = [f.until for f in exclusions.values() if f.until and f.result in (WASHOUT, REVIEW)]
    eligible_from = max(running) if running else None
    if age.result == NOT_MET or EXCLUDED in results:
        status = EXCLUDED
    elif (
        age.result == MET
        and acr.result == MET
        and activity.result == MET
        and REVIEW not in results
        and not pool_open
        and not facts.doubts
    ):
        status = WASHOUT if running else ELIGIBLE
    else:
        status = NEEDS_REVIEW
    result = replace(
        outside_pool,
        candidate=True,
        status=status,
        eligible_from=eligible_from,
        activity=activity,
        exclusions=exclusions,
        notes=(*facts.notes, *patient.notes.values()),
    )
    if status != NEEDS_REVIEW:
        return result
    opening = _pool_reasons(pool, outcomes, open_criteria, len(met)) if pool_open else []
    reasons = [*opening, *_reasons(result, trial), *facts.doubts]
    doubted = bool(opening or facts.doubts) or any(UNREADABLE in r for r in reasons)
    return replace(result, reasons=tuple(reasons), doubted=doubted)


def _evidence_words(evidence: Evidence) -> str:
    """One piece of evidence in a sentence: the record and why it is open."""
    if evidence.note:
        return f"{evidence.resource}: {evidence.note}"
    what = ", ".join(p for p in (evidence.display or evidence.code, evidence.value) if p)
    return f"{evidence.resource} ({what})" if what else evidence.resource


def _words(evidence: Iterable[Evidence], limit: int = 3) -> str:
    items = list(dict.fromkeys(evidence))
    text = "; ".join(_evidence_words(e) for e in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _pool_reasons(
    pool: Outcome, outcomes: dict[str, Outcome], open_criteria: tuple[str, ...], met: int
) -> list[str]:
    """Why a patient outside the pool by what can be read is listed anyway."""
    if pool.value() is None:
        doubts = [m.evidence for m in pool.matches if m.doubt]
        return [f"may be a candidate: pool evidence cannot be read ({_words(doubts)})"]
    doubts = [m.evidence for k in open_criteria for m in outcomes[k].matches if m.doubt]
    return [
        f"may be a candidate: {met} criteria met, and {', '.join(open_criteria)} "
        f"may be met by records that cannot be read ({_words(doubts)})"
    ]


def _reasons(result: PatientResult, trial: Trial) -> list[str]:
    """Why a candidate needs review, in plain words (what stops them being eligible)."""
    out = []
    if result.age.result == UNKNOWN:
        out.append(f"age unknown: {_words(result.age.evidence)}")
    acr = result.acr
    if acr.result != MET:
        out.append(f"criteria met: {acr.count} of {len(acr.criteria)} ({trial.acr_min_met} needed)")
    for key, finding in acr.criteria.items():
        doubts = [e for e in finding.evidence if e.note and e.note.startswith(UNREADABLE)]
        if finding.result == UNKNOWN and doubts:
            out.append(f"{key} unknown: {_words(doubts)}")
    activity = result.activity
    assert activity is not None
    if activity.result != MET:
        out.append(f"disease activity {activity.result} (score {activity.score})")
    for key, finding in result.exclusions.items():
        if finding.result == REVIEW:
            out.append(f"{key} needs review: {_words(finding.evidence)}")
    return out
