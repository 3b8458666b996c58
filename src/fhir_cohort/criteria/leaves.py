"""Leaves: one kind of fact each, read against one rule of the trial language.

Rule: a leaf turns the facts of one patient, as they stood on the as-of date,
into *matches*: facts that satisfy the rule (True), might (None: unreadable),
or, for a latest-occasion rule, decide it against the patient (False). Each
match carries its evidence. Nothing here knows a trial; every difference
between two trials' readings is an option of the rule or of the lab or drug
it names.

Records that could not be read (a fact with ``unreadable`` reasons) take part
through one mechanism: a rule they may satisfy (by their code, or any rule of
their type when their code cannot be read, ``any_code``) gets a match whose
result is None (``doubt``), whose evidence says why; an unreadable record with
no readable date may be any day, so it is in every window. None never meets an
inclusion and makes an exclusion ``review``; a washout such a record could
start or extend is ``review``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from ..normalise.dates import add_months, age_on, date_bounds
from ..normalise.facts import ConditionFact, ExposureFact, LabFact, PatientFacts, Quantity
from ..quality import Note
from . import labtests
from .language import (
    AgeRule,
    ConditionRule,
    DeceasedRule,
    ExposureRule,
    FamilyHistoryRule,
    GenderRule,
    LabRule,
    LabSpec,
    MeasureRule,
    ProcedureRule,
    Trial,
    WashoutExclusion,
)
from .results import CLEAR, REVIEW, WASHOUT, Evidence, Finding

CURRENT_STATUSES = frozenset({"active", "recurrence", "relapse"})
Window = tuple[date, date]
_OPS = {"above": ">", "below": "<", "at_least": ">="}


UNREADABLE = "cannot be read: "  # how the evidence of an unreadable record begins its note


def unreadable(fact: object) -> str | None:
    """Why a fact cannot be read (it then never counts for the patient), or None.

    >>> unreadable(type("F", (), {"unreadable": ("status 'x' is not a FHIR code",)})())
    "cannot be read: status 'x' is not a FHIR code"
    """
    reasons = getattr(fact, "unreadable", ())
    return f"{UNREADABLE}{'; '.join(reasons)[:300]}" if reasons else None


def _may_be_in(fact, window: Window | None) -> bool:
    """In the window, or unreadable with no readable date (it may be any day)."""
    return _in(fact.date, window) or (bool(fact.unreadable) and fact.date is None)


@dataclass(slots=True)
class Match:
    """One fact that satisfies a rule (True), might (None) or decides against it (False).

    Read-only by convention (not frozen: cheaper to build, see ``tree.NodeResult``).
    """

    date: date | None
    result: bool | None
    evidence: Evidence
    doubt: bool = False  # it might, because its record could not be read


@dataclass(slots=True)
class Found:
    """A leaf's matches, and whether a counting fact was examined at all (``seen``)."""

    matches: list[Match] = field(default_factory=list)
    seen: bool = False

    def value(self) -> bool | None:
        results = {m.result for m in self.matches}
        if True in results:
            return True
        return None if None in results else False

    def evidence(self) -> tuple[Evidence, ...]:
        return sort_evidence(m for m in self.matches if m.result is self.value())

    @property
    def doubtful(self) -> bool:
        """Does a record that could not be read leave this rule open?"""
        return any(m.doubt for m in self.matches)

    def on_occasions(self, occasions: int) -> Found:
        """Re-read as "on at least N distinct dated days" (undated never count).

        When unreadable results could make up the days the answer is unknown;
        otherwise too few days is not met.
        """
        if occasions <= 1:
            return self
        hits = [m for m in self.matches if m.result and m.date]
        if len({m.date for m in hits}) >= occasions:
            return Found(hits, self.seen)
        maybe = [m for m in self.matches if m.result is None and m.date]
        anyday = [m for m in self.matches if m.doubt and m.date is None]  # each may be a new day
        if len({m.date for m in hits + maybe}) + len(anyday) >= occasions:
            maybe += anyday
            return Found([*maybe, *(Match(m.date, None, m.evidence) for m in hits)], self.seen)
        return Found([], self.seen)


def sort_evidence(matches: Iterable[Match]) -> tuple[Evidence, ...]:
    """Newest first, the same day by resource, each piece once."""
    chosen = sorted(matches, key=lambda m: m.evidence.resource)
    chosen.sort(key=lambda m: m.date or date.min, reverse=True)
    return tuple(dict.fromkeys(m.evidence for m in chosen))


def _in(day: date | None, window: Window | None) -> bool:
    return window is None or (day is not None and window[0] <= day <= window[1])


def _unit_key(unit: str) -> str:
    """Declared units compare lower-cased with spaces removed.

    >>> _unit_key(" mL/min/1.73 m2 ")
    'ml/min/1.73m2'
    """
    return unit.strip().lower().replace(" ", "")


def round_half_up(value: float, decimals: int) -> float:
    """Round as people do (the float 24.95 is 24.949999…: read as written).

    >>> round_half_up(24.95, 1), round_half_up(2.5, 0), round(24.95, 1)
    (25.0, 3.0, 24.9)
    """
    step = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP))


class Patient:
    """One patient's facts as they stood on ``as_of``, read for one trial; notes found."""

    def __init__(self, facts: PatientFacts, trial: Trial, as_of: date):
        self.facts = facts
        self.trial = trial
        self.as_of = as_of
        self.notes: dict[tuple[str, str], Note] = {}

        def known(items: Iterable):
            return tuple(f for f in items if f.date is None or f.date <= as_of)

        self.conditions = known(facts.conditions)
        self.labs = known(facts.labs)
        self.procedures = known(facts.procedures)
        self.family = known(facts.family_history)
        self.records = facts.records
        self.gender = facts.gender
        self._lab_keys = [(f, frozenset(c.key for c in f.codes)) for f in self.labs]
        self._any_code_labs = tuple(f for f in self.labs if f.any_code)
        self._lab_cache: dict[str, tuple[LabFact, ...]] = {}
        self.age, self._age_bounds, self._age_evidence = self._read_age()

    def note(self, note: Note | None) -> None:
        if note is not None:
            self.notes.setdefault((note.code, note.where), note)

    def window(self, days: int | None) -> Window | None:
        return None if days is None else (self.as_of - timedelta(days=days), self.as_of)

    # -- patient attributes ------------------------------------------------------
    def _read_age(self) -> tuple[int | None, tuple[int, int] | None, Evidence]:
        where = f"Patient/{self.facts.patient_id}"
        birth = self.facts.birth_date
        if self.facts.birth_date_unreadable:
            why = f"{UNREADABLE}{self.facts.birth_date_unreadable}"
            return None, None, Evidence(where, None, value="birthDate", note=why)
        if not birth:
            return None, None, Evidence(where, None, value="no birthDate")
        bounds = date_bounds(birth)
        if bounds is None:
            self.note(Note("bad-date", f"birthDate {birth!r} is not a date", where))
            return None, None, Evidence(where, None, value=f"birthDate {birth}")
        youngest, oldest = age_on(bounds[1], self.as_of), age_on(bounds[0], self.as_of)
        note = None if youngest == oldest else f"age {youngest}–{oldest}"
        evidence = Evidence(where, None, value=f"birthDate {birth}", note=note)
        return (oldest if youngest == oldest else None), (youngest, oldest), evidence

    def age_rule(self, rule: AgeRule) -> bool | None:
        if self._age_bounds is None:
            return None
        youngest, oldest = self._age_bounds
        low = rule.age.min if rule.age.min is not None else -1
        high = rule.age.max if rule.age.max is not None else 10**4
        if youngest >= low and oldest <= high:
            return True
        if oldest < low or youngest > high:
            return False
        return None

    def age_found(self, rule: AgeRule) -> tuple[bool | None, tuple[Evidence, ...]]:
        return self.age_rule(rule), (self._age_evidence,)

    def gender_found(self, rule: GenderRule) -> Found:
        where = f"Patient/{self.facts.patient_id}"
        evidence = Evidence(where, None, value=f"gender {self.gender or 'missing'}")
        return Found([Match(None, True, evidence)] if self.gender in rule.gender else [], True)

    def deceased_found(self, rule: DeceasedRule) -> Found:
        facts, where = self.facts, f"Patient/{self.facts.patient_id}"
        if facts.deceased_boolean:
            return Found([Match(None, True, Evidence(where, None, value="deceasedBoolean true"))])
        if facts.deceased_date and facts.deceased_date <= self.as_of:
            evidence = Evidence(where, facts.deceased_date, value="deceasedDateTime")
            return Found([Match(facts.deceased_date, True, evidence)])
        if facts.deceased_unreadable:
            why = f"{UNREADABLE}{facts.deceased_unreadable}"
            evidence = Evidence(where, None, value="deceased[x]", note=why)
            return Found([Match(None, None, evidence, doubt=True)])
        return Found()

    # -- coded records -------------------------------------------------------------
    def coded_found(
        self, rule: ConditionRule | ProcedureRule | FamilyHistoryRule, window: Window | None
    ) -> Found:
        """Conditions, procedures or relatives' conditions coded in the rule's value set."""
        if rule.within_days is not None:
            window = self.window(rule.within_days)
        elif rule.dated_at_least_days_before is not None:
            window = (date.min, self.as_of - timedelta(days=rule.dated_at_least_days_before))
        undated = rule.undated or ("ignored" if window else "counts")
        if isinstance(rule, ConditionRule):
            facts, name = self.conditions, rule.condition
        elif isinstance(rule, ProcedureRule):
            facts, name = self.procedures, rule.procedure
        else:
            facts, name = self.family, rule.family_history
        valueset = self.trial.valuesets[name]
        found = Found()
        for fact in facts:
            code = valueset.match(fact.codes)
            if code is None and not fact.any_code:
                continue
            why = unreadable(fact)
            if fact.date is None and not why:
                if undated == "ignored":
                    continue
                result: bool | None = True if undated == "counts" else None
            elif not _may_be_in(fact, window):
                continue
            else:
                result = True
            if isinstance(rule, ConditionRule):
                current = _is_current(fact) if rule.status == "current" else True
                if current is False:
                    continue
                if (
                    rule.unless_followed_by
                    and (fact.date is not None or not why)
                    and self.followed(rule.unless_followed_by, fact.date)
                ):
                    continue
                if current is None and not why:
                    why = f"{UNREADABLE}{fact.status_unreadable}"
            if why or code is None:
                evidence = Evidence(
                    fact.source.reference,
                    fact.date,
                    code.key if code else None,
                    (code.display if code else None) or fact.text,
                    note=why,
                )
                found.matches.append(Match(fact.date, None, evidence, doubt=True))
                continue
            found.matches.append(Match(fact.date, result, _coded_evidence(fact, code)))
        found.seen = any(m.result for m in found.matches)
        return found

    # -- labs ----------------------------------------------------------------------
    def labs_of(self, name: str) -> tuple[LabFact, ...]:
        """This patient's results of one lab (any of its codes), computed once."""
        if name not in self._lab_cache:
            valueset = self.trial.valuesets[self.trial.spec.labs[name].valueset]
            if valueset.prefixes or valueset.excluded or valueset.dotted_only:
                found = tuple(f for f in self.labs if valueset.match(f.codes) or f.any_code)
            else:
                found = tuple(
                    f for f, keys in self._lab_keys if not valueset.codes.isdisjoint(keys)
                )
                found += tuple(f for f in self._any_code_labs if f not in found)
            self._lab_cache[name] = found
        return self._lab_cache[name]

    def followed(self, lab: str, day: date | None) -> bool:
        """Is there any readable result of ``lab`` on or after ``day`` (any, if undated)?

        A result that cannot be read follows nothing: it may not count at all.
        """
        return any(
            not f.unreadable and (day is None or (f.date is not None and f.date >= day))
            for f in self.labs_of(lab)
        )

    def lab_found(self, rule: LabRule, window: Window | None) -> Found:
        results = self._lab_cache.get(rule.lab)
        if results is None:
            results = self.labs_of(rule.lab)
        if not results:
            return self.no_result(rule)
        window = self.window(rule.within_days) or window
        spec = self.trial.spec.labs[rule.lab]
        facts = _occasion([f for f in results if _may_be_in(f, window)], rule)
        judged = []
        found = Found()
        valueset = self.trial.valuesets[spec.valueset]
        for fact in facts:
            if fact.unreadable:
                evidence = _lab_evidence(spec, valueset, rule, fact, True)
                doubt = Match(fact.date, None, replace(evidence, note=unreadable(fact)), True)
                found.matches.append(doubt)
                continue
            result, problem = self.lab_test(rule, spec, fact)
            self.note(problem)
            found.seen |= problem is None  # a value whose unit cannot be read does not count
            judged.append((fact, result))
        for fact, result in _agree(judged, rule):
            if result is False and rule.occasion != "latest":
                continue
            if rule.unless_followed_by and self.followed(rule.unless_followed_by, fact.date):
                continue
            evidence = _lab_evidence(spec, valueset, rule, fact, result)
            found.matches.append(Match(fact.date, result, evidence))
        if not facts:
            return self.no_result(rule)
        return found.on_occasions(rule.days or 1)

    def no_result(self, rule: LabRule | MeasureRule) -> Found:
        """No result at all in the window: not met, or unknown with ``no_result: unknown``."""
        if rule.no_result == "not-met":
            return Found()
        name = getattr(rule, "lab", None) or getattr(rule, "measure", "")
        where = f"Patient/{self.facts.patient_id}"
        return Found([Match(None, None, Evidence(where, None, note=f"no {name} result"))])

    def lab_test(
        self, rule: LabRule, spec: LabSpec, fact: LabFact
    ) -> tuple[bool | None, Note | None]:
        """One result against one rule, and the unit problem that stopped it, if any."""
        test = rule.test
        if test in ("positive", "negative"):
            if spec.answers is not None:
                reading, problem = self.declared(spec, fact)
                sign = {"positive": True, "negative": False}.get(reading or "")
            else:
                sign, problem = labtests.positive(fact, spec.kind == "viral_load"), None
            if sign is None:
                return None, problem
            return (sign if test == "positive" else not sign), problem
        if test == "present":
            return labtests.present(fact), None
        if test == "titer_at_least":
            assert rule.titer_at_least is not None
            titer = fact.titer
            return (titer.at_least(rule.titer_at_least) if titer else labtests.positive(fact)), None
        if test == "grade_at_least":
            grade = labtests.dipstick_grade(fact)
            return (None if grade is None else grade >= rule.grade_at_least), None  # type: ignore[operator]
        assert spec.unit is not None
        if test == "low":
            assert rule.low is not None
            return labtests.low(fact, rule.low, spec.unit, fact.source.reference)
        value, problem = self.in_unit(spec, fact)
        if value is None:
            return None, problem
        return value_test(rule, value), None

    def in_unit(self, spec: LabSpec, fact: LabFact) -> tuple[Quantity | None, Note | None]:
        """The result in the lab's unit: its declared spellings only, else the shared table."""
        assert spec.unit is not None
        if spec.units is None:
            return labtests.in_unit(fact.quantity, spec.unit, fact.source.reference)
        quantity = fact.quantity or fact.string_quantity
        if quantity is None:
            return None, None
        declared = {_unit_key(k): v for k, v in spec.units.items()}
        for unit in (quantity.unit, quantity.unit_text):
            if unit and _unit_key(unit) in declared:
                scale = declared[_unit_key(unit)]
                value = round(quantity.value * scale.scale + scale.offset, 9)
                return Quantity(value, quantity.comparator, spec.unit), None
        _, problem = labtests.in_unit(quantity, spec.unit, fact.source.reference)
        return None, problem or Note(
            "unknown-unit",
            f"unit {quantity.unit or ''!r} is not one of the units this lab is read in",
            fact.source.reference,
        )

    def declared(self, spec: LabSpec, fact: LabFact) -> tuple[str | None, Note | None]:
        """The declared reading: coded answer, exact words, bands, then flags with no value."""
        assert spec.answers is not None
        answers = spec.answers
        codes = fact.value_codes
        for code in codes:
            for reading in ("positive", "negative", "indeterminate"):
                if code.key in getattr(answers, reading):
                    return reading, None
        texts = fact.value_texts or ((fact.value_text,) if fact.value_text else ())
        for text in texts:
            for reading in ("positive", "negative"):
                words = getattr(spec.words, reading) if spec.words else ()
                if text.strip().lower() in {w.lower() for w in words}:
                    return reading, None
        if fact.quantity is not None or fact.string_quantity is not None:
            if not spec.bands:
                return None, None
            value, problem = self.in_unit(spec, fact)
            if value is None:
                return None, problem
            return _band(spec, value), None
        if codes or texts:
            return None, None
        flags = spec.flags
        for reading in ("positive", "negative"):
            if flags and fact.interpretation & {f.upper() for f in getattr(flags, reading)}:
                return reading, None
        return None, None

    # -- measures ------------------------------------------------------------------
    def measure_found(self, rule: MeasureRule, window: Window | None) -> Found:
        """A value per day: the day's readable direct results, else each readable
        numerator with each readable denominator of that day."""
        window = self.window(rule.within_days) or window
        measure = self.trial.spec.measures[rule.measure]
        by_day: dict[date, dict[str, list[tuple[LabFact, str]]]] = {}
        sources = [("lab", measure.lab)] if measure.lab else []
        if measure.ratio:
            sources += [("numerator", measure.ratio.numerator)]
            sources += [("denominator", measure.ratio.denominator)]
        for role, lab in sources:
            for fact in self.labs_of(lab):
                if fact.date is not None and _in(fact.date, window):
                    by_day.setdefault(fact.date, {}).setdefault(role, []).append((fact, lab))
        days = sorted(
            (d for d, roles in by_day.items() if "lab" in roles or len(roles) == 2), reverse=True
        )
        if rule.occasion == "latest":
            days = days[:1]
        found = Found()
        for day in days:
            found.seen = True
            values = self._day_values(measure, by_day[day])
            readable = [(used, v) for used, v in values if v is not None]
            results = {value_test(rule, v) for _, v in readable} if readable else {None}
            if rule.same_day == "agree" and len(results) > 1:
                results = {None}
            result = True if True in results else None if None in results else False
            if result is False and rule.occasion != "latest":
                continue
            shown = ", ".join(f"{v.value:g} {measure.unit}" for _, v in readable) or "unreadable"
            for fact, lab in dict.fromkeys(p for used, _ in readable or values for p in used):
                code = self.trial.valuesets[self.trial.spec.labs[lab].valueset].match(fact.codes)
                evidence = Evidence(
                    fact.source.reference,
                    fact.date,
                    code.key if code else None,
                    (code.display if code else None) or fact.text,
                    fact.describe_value() or None,
                    f"{rule.measure} {shown}",
                )
                found.matches.append(Match(day, result, evidence))
        if not days:
            return self.no_result(rule)
        return found.on_occasions(rule.days or 1)

    def _day_values(self, measure, roles: dict[str, list[tuple[LabFact, str]]]):
        """((fact, lab), ...) with the value in the measure's unit (None: unreadable), for a day."""
        labs = self.trial.spec.labs
        direct = []
        for fact, lab in roles.get("lab", ()):
            value, problem = (None, None) if fact.unreadable else self.in_unit(labs[lab], fact)
            self.note(problem)
            direct.append((((fact, lab),), value))
        if any(v is not None for _, v in direct) or not measure.ratio:
            return direct
        ratio = measure.ratio
        pairs = []
        for top, top_lab in roles.get("numerator", ()):
            a = None if top.unreadable else self.in_unit(labs[top_lab], top)[0]
            for bottom, bottom_lab in roles.get("denominator", ()):
                b = None if bottom.unreadable else self.in_unit(labs[bottom_lab], bottom)[0]
                value = None
                if a and b and not a.comparator and not b.comparator and b.value > 0:
                    raw = a.value / b.value**ratio.denominator_power
                    raw = raw if ratio.round is None else round_half_up(raw, ratio.round)
                    value = Quantity(raw, None, measure.unit)
                pairs.append((((top, top_lab), (bottom, bottom_lab)), value))
        return pairs or direct

    # -- medications ---------------------------------------------------------------
    def intervals(self, drug_name: str) -> list[tuple[date, date, object, str | None]]:
        """(start, last day, record, what matched) of each exposure to the drug, capped at
        D; records that cannot be read are included (``matched`` None: any drug)."""
        drug = self.trial.drugs[drug_name]
        if drug.spec.intervals == "day":
            return self._day_spans(drug_name)
        found: list[tuple[date, date, object, str | None]] = []
        for record in self.records:
            matched = drug.matches(record.codes, record.names)
            if not matched and not record.any_drug:
                continue
            if record.start is None or record.start > self.as_of:
                continue
            if record.active:
                end = self.as_of
            elif record.end is not None:
                end = record.end
            elif drug.spec.supply_duration and record.supply_days:
                end = record.start + timedelta(days=record.supply_days - 1)
            else:
                end = record.start
            found.append((record.start, min(max(end, record.start), self.as_of), record, matched))
        return found

    def _day_spans(self, drug_name: str) -> list[tuple[date, date, object, str | None]]:
        """The exposures as the first rules page reads them (an unreadable record at its
        worst: ongoing when its status or dates leave it open)."""
        drug = self.trial.drugs[drug_name]
        found: list[tuple[date, date, object, str | None]] = []
        for exposure in self.facts.exposures:
            matched = drug.matches(exposure.codes, exposure.names)
            if not matched and not exposure.any_drug:
                continue
            last = _last_exposure(exposure, self.as_of)
            if last is not None:
                found.append((exposure.start or last, last, exposure, matched))
        return found

    def exposure_found(self, rule: ExposureRule) -> Found:
        """Continuous exposure: runs of intervals bridging gaps of at most gap_days.

        Met on readable records alone; unknown when records that cannot be read could
        make the run; else not met.
        """
        intervals = sorted(self.intervals(rule.exposure), key=lambda i: (i[0], i[1]))
        if not intervals:
            where = f"Patient/{self.facts.patient_id}"
            evidence = Evidence(where, None, note=f"no {rule.exposure} exposure on record")
            return Found([Match(None, None, evidence)])
        readable = [i for i in intervals if not i[2].unreadable]  # type: ignore[attr-defined]
        good, run = self._best_run(readable, rule) if readable else (False, None)
        result: bool | None = True
        if not good:
            maybe, widest = self._best_run(intervals, rule)
            result = None if maybe else False
            run = widest if maybe or run is None else run
        assert run is not None
        note = f"continuous {run[0].isoformat()} – {run[1].isoformat()}"
        matches = [
            Match(
                end,
                result,
                _exposure_evidence(record, matched, end, unreadable(record) or note),
                bool(unreadable(record)),
            )
            for _, end, record, matched in run[2]
        ]
        return Found(matches, True)

    def _best_run(self, intervals: list, rule: ExposureRule) -> tuple[bool, list]:
        """Whether a run of the intervals meets the rule, and that run (else the latest)."""
        runs: list[list] = []
        for interval in intervals:
            if runs and interval[0] <= runs[-1][1] + timedelta(days=rule.gap_days + 1):
                runs[-1][1] = max(runs[-1][1], interval[1])
                runs[-1][2].append(interval)
            else:
                runs.append([interval[0], interval[1], [interval]])
        latest_end = self.as_of - timedelta(days=rule.ends_within_days)
        earliest_start = self.as_of - timedelta(days=rule.continuous_days)
        good = [r for r in runs if r[1] >= latest_end and r[0] <= earliest_start]
        return bool(good), good[-1] if good else max(runs, key=lambda r: r[1])

    def washout(self, exclusion: WashoutExclusion) -> Finding:
        """Last exposure day + N calendar months > D: washout until that day. A record
        that cannot be read and could start or extend it (read at its worst) makes it
        a review."""
        spans = self.intervals(exclusion.washout)
        seen = {id(i[2]) for i in spans}
        spans += [i for i in self._day_spans(exclusion.washout) if id(i[2]) not in seen]
        months, as_of = exclusion.months, self.as_of
        last = None
        for _, day, record, matched in spans:
            if not record.unreadable and (last is None or day > last[0]):  # type: ignore[attr-defined]
                last = (day, record, matched)
        doubts = [
            _washout_evidence(record, day, matched, months, as_of)
            for _, day, record, matched in spans
            if record.unreadable  # type: ignore[attr-defined]
            and add_months(day, months) > as_of
            and (last is None or day > last[0])
        ]
        if last is None:
            return Finding(REVIEW, tuple(doubts)) if doubts else Finding(CLEAR)
        day, record, matched = last
        until = add_months(day, months)
        evidence = _washout_evidence(record, day, matched, months, as_of)
        running = until if until > as_of else None
        if doubts:
            return Finding(REVIEW, (*doubts, evidence), running)
        if running:
            return Finding(WASHOUT, (evidence,), until)
        return Finding(CLEAR, (evidence,))


def _washout_evidence(record, day: date, matched: str | None, months: int, as_of: date):
    """A medication record as the last exposure of a washout."""
    until = add_months(day, months)
    end = getattr(record, "end", None)
    ongoing = getattr(record, "ongoing", False) or getattr(record, "active", False)
    span = "ongoing" if ongoing or (end and end > as_of) else f"last exposure {day.isoformat()}"
    note = f"+{months} calendar months = {until.isoformat()}"
    if record.unreadable:
        note = f"{unreadable(record)}; at worst {note}"
    any_drug = getattr(record, "any_drug", False)
    return Evidence(
        record.source.reference,
        day,
        matched or ("the drug cannot be read" if any_drug else None),
        ", ".join(record.names[:2]) or None,
        f"{record.status}; {span}",
        note,
    )


def value_test(rule: LabRule | MeasureRule, value: Quantity) -> bool | None:
    """A value (in the rule's unit) against the rule's one value test."""
    compare = labtests.compare
    test = rule.test
    if test in _OPS:
        return compare(value.value, value.comparator, _OPS[test], getattr(rule, test))
    if test == "at_most":
        above = compare(value.value, value.comparator, ">", rule.at_most)  # type: ignore[arg-type]
        return None if above is None else not above
    assert rule.range is not None
    low = (
        compare(value.value, value.comparator, ">=", rule.range.min)
        if rule.range.min is not None
        else True
    )
    high = (
        compare(value.value, value.comparator, ">", rule.range.max)
        if rule.range.max is not None
        else False
    )
    high = None if high is None else not high
    if low is False or high is False:
        return False
    return None if low is None or high is None else True


def _band(spec: LabSpec, value: Quantity) -> str | None:
    """The band a value falls in; None when its comparator straddles bands."""
    assert spec.bands
    found = set()
    for band in spec.bands:
        inside = (
            True
            if band.below is None
            else labtests.compare(value.value, value.comparator, "<", band.below)
        )
        if inside is True:
            found.add(band.result)
            break
        if inside is None:
            found.add(band.result)
    return found.pop() if len(found) == 1 else None


def _occasion(facts: list[LabFact], rule: LabRule) -> list[LabFact]:
    """occasion latest: the results on the latest date a readable result has (all of
    them when none is dated), and any result that cannot be read unless certainly older."""
    if rule.occasion != "latest" or not facts:
        return facts
    dated = [f.date for f in facts if f.date and not f.unreadable]
    if not dated:
        return facts
    last = max(dated)
    return [
        f for f in facts if f.date == last or (f.unreadable and (f.date is None or f.date >= last))
    ]


def _agree(judged: list[tuple[LabFact, bool | None]], rule: LabRule):
    """same_day agree: unreadable results dropped when a readable one remains; readable
    results that disagree are unknown."""
    if rule.same_day != "agree":
        return judged
    readable = [(f, r) for f, r in judged if r is not None]
    if not readable:
        return judged
    if len({r for _, r in readable}) > 1:
        return [(f, None) for f, _ in readable]
    return readable


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


def _coded_evidence(fact, code) -> Evidence:
    if isinstance(fact, ConditionFact):
        value = f"clinicalStatus {fact.clinical_status or 'missing'}" + (
            f", verificationStatus {fact.verification_status}" if fact.verification_status else ""
        )
    elif hasattr(fact, "relationship"):
        value = f"relative {fact.relationship or 'unknown'}"
    else:
        value = None
    return Evidence(fact.source.reference, fact.date, code.key, code.display or fact.text, value)


def _exposure_evidence(record, matched: str, end: date, note: str) -> Evidence:
    return Evidence(
        record.source.reference,
        end,
        matched,
        ", ".join(record.names[:2]) or None,
        record.status,
        note,
    )


def _lab_evidence(
    spec: LabSpec, valueset, rule: LabRule, fact: LabFact, result: bool | None
) -> Evidence:
    code = valueset.match(fact.codes)
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
    note = None
    if result is None:
        test = rule.test
        threshold = getattr(rule, test)
        if test == "range":
            shown = f"in {_bound(threshold.min)}–{_bound(threshold.max)}"
        else:
            shown = "" if threshold is True else f"{threshold:g}"
        unit = "" if threshold is True else spec.unit or ""
        note = f"cannot tell whether {test.replace('_', ' ')} {shown} {unit}".strip()
        note = " ".join(note.split())
    return Evidence(
        fact.source.reference,
        fact.date,
        code.key if code else None,
        (code.display if code else None) or fact.text,
        value or None,
        note,
    )


def _bound(value: float | None) -> str:
    return "" if value is None else f"{value:g}"
