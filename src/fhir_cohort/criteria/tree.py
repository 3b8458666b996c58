"""The engine: a trial's rules over one patient's facts, three-valued, with evidence.

Rule: :func:`evaluate` is one pure function (no I/O, clock or globals) from a
patient's facts, a trial and an as-of date to a :class:`TrialResult`. Every
rule answers met / not-met / unknown (True / False / None, Kleene logic) with
the evidence it rests on. Exclusions map answers to excluded / review / clear,
washouts to washout (with ``until``) / clear. Status is the same for every
trial: excluded (an inclusion with ``not_met: excludes`` known and not met, or
an exclusion excluded), eligible (every inclusion met, nothing to review, no
washout), washout (would be eligible, a washout running), else needs-review
with its reasons in plain words.

Records that could not be read never count in the patient's favour (see
:mod:`.leaves`): an ``at_least`` that records which cannot be read could bring
to N is unknown, whatever its ``otherwise``; a patient whose pool answer is
unknown is listed (needs-review, saying why), not dropped; a patient with
records that could not be read at all (``facts.doubts``) is never eligible nor
in a washout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
from .leaves import UNREADABLE, Found, Match, Patient, Window, sort_evidence
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
    doubt: bool = False  # a record that cannot be read leaves it open

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
    doubted: bool = False  # records that cannot be read stopped a better status

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
            "notes": [
                {"code": n.code, "where": n.where, "message": n.message}
                for n in dict.fromkeys(self.notes)
            ],
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
        doubt = any(e.note and e.note.startswith(UNREADABLE) for e in evidence)
        return NodeResult(
            "age", value, evidence, name, assessed=True, shown=self.patient.age, doubt=doubt
        )

    def criterion(self, rule: CriterionRule, window: Window | None, name) -> NodeResult:
        answer = self.inclusion(rule.criterion)
        return NodeResult(
            "criterion", answer.value, answer.evidence, name, (answer,), answer.matches,
            answer.assessed, doubt=answer.doubt,
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
        return NodeResult(
            "any", value, evidence, name, tuple(parts), matches, assessed, own, doubt=_doubt(parts)
        )

    def all_(self, rule: AllRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        parts = [self.node(child, own or window) for child in rule.all]
        value = _kleene_all([p.value for p in parts])
        assessed = any(p.assessed for p in parts)
        evidence = _evidence_of(parts, value)
        return NodeResult(
            "all", value, evidence, name, tuple(parts), (), assessed, own, doubt=_doubt(parts)
        )

    def not_(self, rule: NotRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        part = self.node(rule.not_, own or window)
        value = None if part.value is None else not part.value
        return NodeResult(
            "not", value, part.evidence, name, (part,), (), part.assessed, own, doubt=part.doubt
        )

    def at_least(self, rule: AtLeastRule, window: Window | None, name) -> NodeResult:
        own = self.patient.window(rule.window_days)
        parts = [self.node(child, own or window, key) for key, child in rule.of.items()]
        met = sum(bool(p.value) for p in parts)
        open_ = sum(p.value is None for p in parts)
        doubtful = sum(p.value is None and p.doubt for p in parts)
        if met >= rule.at_least:
            value: bool | None = True
        elif met + (open_ if rule.otherwise == "unknown" else doubtful) >= rule.at_least:
            value = None  # unknown ones could make N (records that cannot be read always can)
        else:
            value = False
        evidence = tuple(e for p in parts if p.value for e in p.evidence)
        assessed = any(p.assessed for p in parts)
        return NodeResult(
            "at_least", value, evidence, name, tuple(parts), (), assessed, own, doubt=_doubt(parts)
        )

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
        return NodeResult(
            "score", value, evidence, name, tuple(parts), (), assessed, own, score,
            doubt=_doubt(parts),
        )  # fmt: skip

    def if_(self, rule: IfRule, window: Window | None, name: str | None) -> NodeResult:
        own = self.patient.window(rule.window_days)
        condition = self.node(rule.if_, own or window)
        if condition.value is False:
            value = _ELSE[rule.else_]
            return NodeResult("if", value, (), name, (condition,), (), condition.assessed, own)
        then = self.node(rule.then, own or window)
        return NodeResult(
            "if", then.value, then.evidence, name, (condition, then), then.matches,
            then.assessed, own, doubt=then.doubt,
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


# rule -> (kind, how the patient reads it, whether a window applies)
_LEAVES: dict[type, tuple[str, Callable[..., Found], bool]] = {
    ConditionRule: ("condition", Patient.coded_found, True),
    ProcedureRule: ("procedure", Patient.coded_found, True),
    FamilyHistoryRule: ("familyhistory", Patient.coded_found, True),
    LabRule: ("lab", Patient.lab_found, True),
    MeasureRule: ("measure", Patient.measure_found, True),
    ExposureRule: ("exposure", Patient.exposure_found, False),
    GenderRule: ("gender", Patient.gender_found, False),
    DeceasedRule: ("deceased", Patient.deceased_found, False),
}


_DISPATCH: dict[type, Callable[..., NodeResult]] = {
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
        kind, value, found.evidence(), name, parts, tuple(found.matches), found.seen, window,
        doubt=value is None and found.doubtful,
    )  # fmt: skip


def _doubt(parts: Iterable[NodeResult]) -> bool:
    return any(p.value is None and p.doubt for p in parts)


def _evidence_of(parts: list[NodeResult], value: bool | None) -> tuple[Evidence, ...]:
    """The evidence of the parts that gave the combinator its answer, newest first."""
    chosen = [Match(e.date, value, e) for p in parts if p.value is value for e in p.evidence]
    return sort_evidence(chosen)


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


def _unreadable(evidence: Iterable[Evidence]) -> list[Evidence]:
    return [e for e in evidence if e.note and e.note.startswith(UNREADABLE)]


def _open_parts(node: NodeResult) -> tuple[list[NodeResult], list[NodeResult]]:
    """The unknown leaves and ``at_least`` nodes an unknown answer comes from."""
    if not node.parts:
        return ([node] if node.value is None else []), []
    leaves: list[NodeResult] = []
    counts: list[NodeResult] = []
    for part in node.parts:
        if part.value is not None:
            continue
        if part.kind == "at_least":
            counts.append(part)
            continue
        more = _open_parts(part)
        leaves += more[0]
        counts += more[1]
    return leaves, counts


def _pool_reasons(pool: NodeResult) -> list[str]:
    """Why a patient the pool may hold, by records that cannot be read, is listed."""
    leaves, counts = _open_parts(pool)
    doubts = _unreadable(e for leaf in leaves for e in leaf.evidence)
    if doubts or not counts:
        why = f" ({_words(doubts)})" if doubts else ""
        return [f"may be a candidate: pool evidence cannot be read{why}"]
    found = []
    for node in counts:
        open_ = [p for p in node.parts if p.value is None and p.doubt]
        words = _words(_unreadable(e for p in open_ for e in p.evidence))
        found.append(
            f"may be a candidate: {len(node.met)} criteria met, and "
            f"{', '.join(str(p.id) for p in open_)} may be met by records that cannot be read "
            f"({words})"
        )
    return found


def _scores(node: NodeResult) -> list[int]:
    found = [node.score] if node.kind == "score" and node.score is not None else []
    return found + [s for part in node.parts for s in _scores(part)]


def _inclusion_reasons(label: str, node: NodeResult, needed: int | None, trial) -> list[str]:
    """Why one inclusion is not met, in the trial's words."""
    doubts = _unreadable(node.evidence)
    if node.kind == "at_least":
        out = [
            f"{label}: {node.result} ({len(node.met)} of {len(node.parts)} met, {needed} needed)"
        ]
        for part in node.parts:
            doubts = _unreadable(part.evidence)
            if part.value is None and doubts:
                out.append(f"{trial.label(part.id)}: unknown ({_words(doubts)})")
        return out
    if node.value is None and (doubts or node.kind == "age"):
        return [f"{label}: unknown ({_words(doubts or node.evidence)})"]
    scores = _scores(node)
    shown = f" (score {scores[0]})" if scores and node.value is False else ""
    return [f"{label}: {node.result}{shown}"]


def _reasons(
    trial: Trial, pool: NodeResult, inclusions: dict[str, NodeResult], exclusions
) -> list[str]:
    """What keeps a needs-review patient from being eligible, in plain words."""
    found = _pool_reasons(pool) if pool.value is None else []
    for key, node in inclusions.items():
        if node.value is not True:
            rule = trial.spec.inclusions[key].rule
            needed = getattr(rule, "at_least", None)
            found += _inclusion_reasons(trial.label(key), node, needed, trial)
    for key, finding in exclusions.items():
        if finding.result == REVIEW:
            found.append(f"{key} needs review: {_words(finding.evidence)}")
    return found


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
    running = [f.until for f in exclusions.values() if f.until and f.result in (WASHOUT, REVIEW)]
    hard = any(
        node.value is False and trial.spec.inclusions[key].not_met == "excludes"
        for key, node in inclusions.items()
    )
    if hard or EXCLUDED in results:
        status = EXCLUDED
    elif (
        pool.value
        and all(node.value for node in inclusions.values())
        and REVIEW not in results
        and not facts.doubts
    ):
        status = WASHOUT if WASHOUT in results else ELIGIBLE
    else:
        status = NEEDS_REVIEW
    reasons: list[str] = []
    if status == NEEDS_REVIEW:
        reasons = [*_reasons(trial, pool, inclusions, exclusions), *facts.doubts]
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
        reasons=tuple(reasons),
        notes=(*facts.notes, *run.patient.notes.values()),
        doubted=bool(reasons)
        and (pool.value is None or bool(facts.doubts) or any(UNREADABLE in r for r in reasons)),
    )
