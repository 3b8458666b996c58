"""The engine: a trial's rules over one patient's facts, three-valued, with evidence.

Rule: :func:`evaluate` is one pure function (no I/O, clock or globals) from a
patient's facts, a trial and an as-of date to a :class:`TrialResult`. Every
rule answers met / not-met / unknown (True / False / None, Kleene logic) with
the evidence it rests on. Exclusions map answers to excluded / review / clear,
washouts to washout (with ``until``) / clear. Status is the same for every
trial: excluded (an inclusion with ``not_met: excludes`` known and not met, or
an exclusion excluded), eligible (every inclusion met, nothing to review, no
washout), washout (would be eligible, a washout running), else needs-review
with its reasons in the trial's words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from ..normalise.facts import PatientFacts
from ..quality import Note
from .language import (
    AgeRule,
    AllRule,
    AnyRule,
    AtLeastRule,
    ConditionRule,
    CriterionRule,
    DeceasedRule,
    ExposureRule,
    FamilyHistoryRule,
    GenderRule,
    IfRule,
    LabRule,
    MeasureRule,
    NotRule,
    ProcedureRule,
    RulesExclusion,
    ScoreRule,
    Trial,
)
from .leaves import Found, Match, Patient, Window, sort_evidence
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
    Evidence,
    Finding,
)

SEVERITY = {CLEAR: 0, REVIEW: 1, EXCLUDED: 2}
_WORDS = {True: MET, False: NOT_MET, None: UNKNOWN}
_ELSE = {"met": True, "not-met": False, "unknown": None, "clear": False}


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


@dataclass(slots=True)
class NodeResult:
    """One rule's answer: ``value`` True / False / None, its evidence and its parts.

    Read-only by convention (not frozen: a frozen dataclass costs ten times as much to
    build, and a patient's evaluation builds some sixty of these).

    ``kind`` is the rule's key (``any``, ``at_least``, ``lab``, ...); ``parts``
    the answers of its sub-rules (named ones, ``id``, are reported under
    ``parts``, ``criteria`` or ``descriptors``); ``matches`` the facts behind a
    leaf or ``any`` (for counting days); ``assessed`` whether a counting fact
    was examined at all.
    """

    kind: str
    value: bool | None
    evidence: tuple[Evidence, ...] = ()
    id: str | None = None
    parts: tuple[NodeResult, ...] = ()
    matches: tuple[Match, ...] = ()
    assessed: bool = False
    window: Window | None = None
    score: int | None = None
    weight: int | None = None
    shown: int | None = None  # the age leaf's completed years

    @property
    def result(self) -> str:
        return _WORDS[self.value]

    @property
    def met(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.parts if p.value and p.id)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.parts if p.value is None and p.id)

    def find(self, wanted: str) -> NodeResult | None:
        """The first sub-result (depth first) whose id is ``wanted``."""
        for part in self.parts:
            if part.id == wanted:
                return part
            found = part.find(wanted)
            if found is not None:
                return found
        return None

    def latest_evidence(self) -> date | None:
        return max((e.date for e in self.evidence if e.date), default=None)

    def to_dict(self) -> dict:
        out: dict = {"result": self.result}
        if self.kind == "age":
            out["value"] = self.shown
        if self.kind == "at_least":
            out["count"] = len(self.met)
            out["met"] = list(self.met)
            out["missing"] = [p.id for p in self.parts if not p.value]
        if self.kind == "score":
            out["score"] = self.score
        if self.window:
            out["window"] = {"from": _iso(self.window[0]), "to": _iso(self.window[1])}
        out["evidence"] = [e.to_dict() for e in self.evidence]
        if self.kind == "at_least":
            out["criteria"] = {p.id: p.to_dict() for p in self.parts}
        elif self.kind == "score":
            out["descriptors"] = {p.id: {"weight": p.weight, **p.to_dict()} for p in self.parts}
        else:
            named = {p.id: p.to_dict() for p in self.parts if p.id}
            if named:
                out["parts"] = named
        return out


@dataclass(frozen=True, slots=True)
class TrialResult:
    """Everything decided about one patient for one trial at one as-of date."""

    patient: str
    name: str | None
    as_of: date
    candidate: bool
    status: str
    eligible_from: date | None
    age: int | None
    pool: NodeResult
    inclusions: dict[str, NodeResult] = field(default_factory=dict)
    exclusions: dict[str, Finding] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()

    def node(self, path: str) -> NodeResult | None:
        """``age`` is an inclusion's answer; ``activity.recent`` a named rule inside it."""
        head, _, rest = path.partition(".")
        node = self.inclusions.get(head)
        for part in rest.split(".") if rest else ():
            if node is None:
                return None
            node = node if node.id == part else node.find(part)
        return node

    def to_dict(self) -> dict:
        return {
            "patient": self.patient,
            "name": self.name,
            "status": self.status,
            "eligible_from": _iso(self.eligible_from),
            "reasons": list(self.reasons),
            "age": self.age,
            "criteria": {k: n.to_dict() for k, n in self.inclusions.items()},
            "exclusions": {k: f.to_dict() for k, f in self.exclusions.items()},
        }


def _kleene_any(values: list[bool | None]) -> bool | None:
    if True in values:
        return True
    return None if None in values else False


def _kleene_all(values: list[bool | None]) -> bool | None:
    if False in values:
        return False
    return None if None in values else True


class _Evaluation:
    """One patient, one trial, one day: rules in, :class:`NodeResult` out."""

    def __init__(self, facts: PatientFacts, trial: Trial, as_of: date):
        self.trial = trial
        self.patient = Patient(facts, trial, as_of)
        self.criteria: dict[str, NodeResult] = {}

    def inclusion(self, key: str) -> NodeResult:
        if key not in self.criteria:
            self.criteria[key] = self.node(self.trial.spec.inclusions[key].rule, None)
        return self.criteria[key]

    def node(self, rule, window: Window | None, name: str | None = None) -> NodeResult:
        """A rule's answer; ``window`` is the one a combinator above set (None: lifetime)."""
        return _DISPATCH[type(rule)](self, rule, window, name or rule.id)

    def leaf(self, rule, window: Window | None, name: str | None) -> NodeResult:
        kind, read, windowed = _LEAVES[type(rule)]
        found = read(self.patient, rule, window) if windowed else read(self.patient, rule)
        return _leaf(kind, found, name)

    def age(self, rule: AgeRule, window: Window | None, name: str | None) -> NodeResult:
        value, evidence = self.patient.age_found(rule)
        return NodeResult("age", value, evidence, name, assessed=True, shown=self.patient.age)

    def criterion(self, rule: CriterionRule, window: Window | None, name) -> NodeResult:
        answer = self.inclusion(rule.criterion)
        return NodeResult(
            "criterion", answer.value, answer.evidence, name, (answer,), answer.matches,
            answer.assessed,
        )  # fmt: skip

    def any_(self, rule: AnyRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        parts = [self.node(child, own or window) for child in rule.any]
        assessed = any(p.assessed for p in parts)
        if rule.occasions > 1:
            found = Found([m for p in parts for m in p.matches], assessed)
            return _leaf("any", found.on_occasions(rule.occasions), name, tuple(parts), own)
        value = _kleene_any([p.value for p in parts])
        matches = tuple(m for p in parts for m in p.matches)
        evidence = _evidence_of(parts, value)
        return NodeResult("any", value, evidence, name, tuple(parts), matches, assessed, own)

    def all_(self, rule: AllRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        parts = [self.node(child, own or window) for child in rule.all]
        value = _kleene_all([p.value for p in parts])
        assessed = any(p.assessed for p in parts)
        evidence = _evidence_of(parts, value)
        return NodeResult("all", value, evidence, name, tuple(parts), (), assessed, own)

    def not_(self, rule: NotRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        part = self.node(rule.not_, own or window)
        value = None if part.value is None else not part.value
        return NodeResult("not", value, part.evidence, name, (part,), (), part.assessed, own)

    def at_least(self, rule: AtLeastRule, window: Window | None, name) -> NodeResult:
        own = self.patient.window(rule.window_days)
        parts = [self.node(child, own or window, key) for key, child in rule.of.items()]
        met = sum(bool(p.value) for p in parts)
        open_ = sum(p.value is None for p in parts)
        if met >= rule.at_least:
            value: bool | None = True
        elif rule.otherwise == "unknown" and met + open_ >= rule.at_least:
            value = None
        else:
            value = False
        evidence = tuple(e for p in parts if p.value for e in p.evidence)
        assessed = any(p.assessed for p in parts)
        return NodeResult("at_least", value, evidence, name, tuple(parts), (), assessed, own)

    def score(self, rule: ScoreRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        parts = []
        for key, item in rule.score.items.items():
            part = self.node(item.rule, own or window, key)
            part.weight = item.weight
            parts.append(part)
        score = sum(p.weight for p in parts if p.value)  # type: ignore[misc]
        assessed = any(p.assessed for p in parts)
        if score >= rule.score.at_least:
            value: bool | None = True
        else:
            value = False if assessed else None
        evidence = tuple(e for p in parts if p.value for e in p.evidence)
        return NodeResult("score", value, evidence, name, tuple(parts), (), assessed, own, score)

    def if_(self, rule: IfRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        condition = self.node(rule.if_, own or window)
        if condition.value is False:
            value = _ELSE[rule.else_]
            return NodeResult("if", value, (), name, (condition,), (), condition.assessed, own)
        then = self.node(rule.then, own or window)
        return NodeResult(
            "if", then.value, then.evidence, name, (condition, then), then.matches,
            then.assessed, own,
        )  # fmt: skip

    def exclusion(self, key: str) -> Finding:
        spec = self.trial.spec.exclusions[key]
        if not isinstance(spec, RulesExclusion):
            return self.patient.washout(spec)
        worst, evidence = CLEAR, []
        for part in spec.rules:
            answer = self.node(part.rule, None)
            if answer.value is False:
                continue
            outcome = part.outcome if answer.value else REVIEW
            if SEVERITY[outcome] > SEVERITY[worst]:
                worst, evidence = outcome, list(answer.evidence)
            elif outcome == worst:
                evidence += answer.evidence
        return Finding(worst, tuple(dict.fromkeys(evidence)))


_LEAVES = {  # rule -> (kind, how the patient reads it, whether a window applies)
    ConditionRule: ("condition", Patient.coded_found, True),
    ProcedureRule: ("procedure", Patient.coded_found, True),
    FamilyHistoryRule: ("familyhistory", Patient.coded_found, True),
    LabRule: ("lab", Patient.lab_found, True),
    MeasureRule: ("measure", Patient.measure_found, True),
    ExposureRule: ("exposure", Patient.exposure_found, False),
    GenderRule: ("gender", Patient.gender_found, False),
    DeceasedRule: ("deceased", Patient.deceased_found, False),
}


_DISPATCH = {
    **{leaf: _Evaluation.leaf for leaf in _LEAVES},
    AgeRule: _Evaluation.age,
    CriterionRule: _Evaluation.criterion,
    AnyRule: _Evaluation.any_,
    AllRule: _Evaluation.all_,
    NotRule: _Evaluation.not_,
    AtLeastRule: _Evaluation.at_least,
    ScoreRule: _Evaluation.score,
    IfRule: _Evaluation.if_,
}


def _leaf(
    kind: str,
    found: Found,
    name: str | None,
    parts: tuple[NodeResult, ...] = (),
    window: Window | None = None,
) -> NodeResult:
    if not found.matches:  # the usual case: nothing on record
        return NodeResult(kind, False, (), name, parts, (), found.seen, window)
    value = found.value()
    return NodeResult(
        kind, value, found.evidence(), name, parts, tuple(found.matches), found.seen, window
    )


def _evidence_of(parts: list[NodeResult], value: bool | None) -> tuple[Evidence, ...]:
    """The evidence of the parts that gave the combinator its answer, newest first."""
    chosen = [Match(e.date, value, e) for p in parts if p.value is value for e in p.evidence]
    return sort_evidence(chosen)


def _reasons(
    trial: Trial, pool: NodeResult, inclusions: dict[str, NodeResult], exclusions
) -> tuple[str, ...]:
    """What keeps a patient from being eligible, in the trial's words."""
    found = []
    if pool.value is None:
        found.append(f"{trial.label(trial.spec.funnel.pool if trial.spec.funnel else 'pool')}: "
                     "unknown")  # fmt: skip
    for key, node in inclusions.items():
        if node.value is not True:
            found.append(f"{trial.label(key)}: {node.result}")
    for key, finding in exclusions.items():
        if finding.result == WASHOUT:
            found.append(f"{trial.label(key)}: washout until {_iso(finding.until)}")
        elif finding.result != CLEAR:
            found.append(f"{trial.label(key)}: {finding.result}")
    return tuple(found)


def evaluate(facts: PatientFacts, trial: Trial, as_of: date) -> TrialResult:
    """Decide one patient for one trial as of one day (pure)."""
    run = _Evaluation(facts, trial, as_of)
    pool = run.node(trial.spec.candidate_pool, None)
    outside = TrialResult(
        patient=facts.patient_id,
        name=facts.name,
        as_of=as_of,
        candidate=False,
        status=NOT_A_CANDIDATE,
        eligible_from=None,
        age=run.patient.age,
        pool=pool,
        notes=(*facts.notes, *run.patient.notes.values()),
    )
    if pool.value is False:
        return outside
    inclusions = {key: run.inclusion(key) for key in trial.spec.inclusions}
    exclusions = {key: run.exclusion(key) for key in trial.spec.exclusions}
    results = {f.result for f in exclusions.values()}
    running = [f.until for f in exclusions.values() if f.result == WASHOUT and f.until]
    hard = any(
        node.value is False and trial.spec.inclusions[key].not_met == "excludes"
        for key, node in inclusions.items()
    )
    if hard or EXCLUDED in results:
        status = EXCLUDED
    elif pool.value and all(node.value for node in inclusions.values()) and REVIEW not in results:
        status = WASHOUT if running else ELIGIBLE
    else:
        status = NEEDS_REVIEW
    return TrialResult(
        patient=facts.patient_id,
        name=facts.name,
        as_of=as_of,
        candidate=True,
        status=status,
        eligible_from=max(running) if running else None,
        age=run.patient.age,
        pool=pool,
        inclusions=inclusions,
        exclusions=exclusions,
        reasons=() if status == ELIGIBLE else _reasons(trial, pool, inclusions, exclusions),
        notes=(*facts.notes, *run.patient.notes.values()),
    )
