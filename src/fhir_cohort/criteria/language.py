"""The trial language: the models of a trial file, and its strict loader.

Rule: a trial file is validated completely before anything runs. The pydantic
models below (``extra="forbid"``, strict types) are the whole vocabulary, and
their JSON Schema is the reference page ``docs/trial-language.md``. Then every
name the file uses is resolved: value sets, labs, drugs, measures, inclusion
ids, ranking paths, labels. Any problem is a :class:`TrialError` naming the
file, the line and the dotted path of the entry, with a suggestion for a
misspelt key (``misle.yaml:142: inclusions.activity.rule.window_dayz: unknown
key; did you mean window_days?``). The loader knows no particular trial.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from ..errors import UsageError
from ..normalise.codes import canonical_code, canonical_system
from ..sources.plan import ServerPlan
from .valuesets import ValueSet, ValueSetError, load_valueset


class TrialError(UsageError):
    """A trial file cannot be used; ``problems`` lists every "file:line: path: why"."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


Days = Annotated[int, Field(ge=0, description="a number of days, 0 or more")]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", description="an id: a-z, 0-9, _")]
Outcome3 = Literal["met", "not-met", "unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- leaves


class _Node(_Model):
    id: Name | None = Field(
        None, description="names this rule: ranking paths and reports (`parts.<id>`) use it"
    )


class AgeBounds(_Model):
    min: int | None = Field(None, ge=0, description="completed years, inclusive")
    max: int | None = Field(None, ge=0, description="completed years, inclusive")

    @model_validator(mode="after")
    def _bounds(self) -> AgeBounds:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class AgeRule(_Node):
    """Age in completed years at the as-of date; a partial birthDate is read as the range
    it allows (unknown when the range straddles a bound); 29 February birthdays are
    reached on 1 March."""

    age: AgeBounds


class GenderRule(_Node):
    """Patient.gender is one of these (no gender: not met)."""

    gender: list[Literal["female", "male", "other", "unknown"]] = Field(min_length=1)


class DeceasedRule(_Node):
    """deceasedBoolean true, or deceasedDateTime on or before the as-of date."""

    deceased: Literal[True]


class _Timed(_Node):
    within_days: Days | None = Field(
        None, description="dated within D − N … D (both included); overrides the combinator's"
    )
    dated_at_least_days_before: Days | None = Field(None, description="dated on or before D − N")
    undated: Literal["counts", "ignored", "unknown"] | None = Field(
        None,
        description="what an undated record says: default counts without a time constraint, "
        "ignored with one",
    )

    @model_validator(mode="after")
    def _one_time_constraint(self) -> _Timed:
        if self.within_days is not None and self.dated_at_least_days_before is not None:
            raise ValueError("give within_days or dated_at_least_days_before, not both")
        return self


class ConditionRule(_Timed):
    """A counting Condition whose code is in the value set."""

    condition: str = Field(description="a value set in valuesets/")
    status: Literal["any", "current"] = Field(
        "any",
        description="current: clinicalStatus active, recurrence or relapse, or none on a "
        "dated Condition",
    )
    unless_followed_by: str | None = Field(
        None, description="a lab: no hit when that lab has a result on or after it"
    )


class ProcedureRule(_Timed):
    """A counting Procedure whose code is in the value set."""

    procedure: str = Field(description="a value set in valuesets/")


class FamilyHistoryRule(_Timed):
    """A FamilyMemberHistory condition (status partial or completed; dated after D: ignored;
    undated counts) whose code is in the value set."""

    family_history: str = Field(description="a value set in valuesets/")


class Range(_Model):
    min: float | None = Field(None, description="inclusive")
    max: float | None = Field(None, description="inclusive")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


VALUE_TESTS = ("range", "above", "below", "at_least", "at_most")
LAB_TESTS = (
    "positive",
    "negative",
    "present",
    *VALUE_TESTS,
    "titer_at_least",
    "low",
    "grade_at_least",
)


class _Tested(_Node):
    range: Range | None = Field(None, description="inclusive range, in the unit")
    above: float | None = Field(None, description="> X, in the unit")
    below: float | None = Field(None, description="< X, in the unit")
    at_least: float | None = Field(None, description="≥ X, in the unit")
    at_most: float | None = Field(None, description="≤ X, in the unit")
    within_days: Days | None = Field(None, description="results dated D − N … D")
    occasion: Literal["any", "latest"] = Field(
        "any", description="latest: only the results on the latest date decide"
    )
    same_day: Literal["any", "agree"] = Field(
        "any",
        description="with occasion latest: any = a same-day hit wins; agree = readable "
        "results that disagree are unknown (unreadable ones dropped when a readable one remains)",
    )
    days: int | None = Field(None, ge=1, description="hits on at least N distinct dated days")
    no_result: Literal["not-met", "unknown"] = Field(
        "not-met", description="the answer when there is no result at all (in the window)"
    )

    @cached_property
    def test(self) -> str:
        """The one test this rule applies."""
        return next(name for name in LAB_TESTS if getattr(self, name, None) is not None)

    @model_validator(mode="after")
    def _one_test(self) -> _Tested:
        given = [name for name in LAB_TESTS if getattr(self, name, None) is not None]
        if len(given) != 1:
            allowed = [n for n in LAB_TESTS if n in type(self).model_fields]
            raise ValueError(f"give exactly one test of: {', '.join(allowed)}")
        if self.same_day == "agree" and self.occasion != "latest":
            raise ValueError("same_day: agree needs occasion: latest")
        return self


class LabRule(_Tested):
    """Results of a lab (see `labs:`) that pass one test."""

    lab: str = Field(description="a lab named in labs:")
    positive: Literal[True] | None = Field(None, description="the lab's positive reading")
    negative: Literal[True] | None = Field(None, description="the lab's negative reading")
    present: Literal[True] | None = Field(
        None, description="casts and cells: a count above 0, or written present"
    )
    titer_at_least: float | None = Field(
        None, description="titer ≥ 1:N; without a titer, a qualitative positive"
    )
    low: float | None = Field(
        None, description="below referenceRange.low or flagged L/LL; with neither, below X"
    )
    grade_at_least: float | None = Field(None, description="urine dipstick grade (3 = 3+)")
    unless_followed_by: str | None = Field(
        None, description="a lab: no hit when that lab has a result on or after it"
    )


class MeasureRule(_Tested):
    """A value computed per day (see `measures:`) that passes one test."""

    measure: str = Field(description="a measure named in measures:")


class ExposureRule(_Node):
    """Continuous exposure to a drug: intervals sorted by start, a run absorbing the next
    interval that starts at most gap_days + 1 days after the run's latest end; met when a
    run ends on or after D − ends_within_days and starts on or before D − continuous_days;
    no interval at all: unknown."""

    exposure: str = Field(description="a drug named in medications:")
    continuous_days: Days
    gap_days: Days = 0
    ends_within_days: Days = 0


class CriterionRule(_Node):
    """The answer of an inclusion of this trial (evaluated once)."""

    criterion: str = Field(description="an inclusion id")


# --------------------------------------------------------------------------- combinators


class _Combinator(_Node):
    window_days: Days | None = Field(
        None, description="the window D − N … D for every leaf inside that sets none"
    )


class AllRule(_Combinator):
    """Every rule met (Kleene: any not-met → not-met; else any unknown → unknown)."""

    all: list[Rule] = Field(min_length=1)


class AnyRule(_Combinator):
    """Some rule met (Kleene: any met → met; else any unknown → unknown)."""

    any: list[Rule] = Field(min_length=1)
    occasions: int = Field(
        1,
        ge=1,
        description="met on N distinct dated days, over all the leaves (undated never count)",
    )


class NotRule(_Combinator):
    """The opposite answer (unknown stays unknown)."""

    not_: Rule = Field(alias="not")


class AtLeastRule(_Combinator):
    """At least N of the named rules met; each reported under `criteria.<id>`."""

    at_least: int = Field(ge=1)
    of: dict[Name, Rule] = Field(min_length=1)
    otherwise: Literal["not-met", "unknown"] = Field(
        "unknown",
        description="the answer when fewer than N are met but unknown ones could make N",
    )

    @model_validator(mode="after")
    def _reachable(self) -> AtLeastRule:
        if self.at_least > len(self.of):
            raise ValueError(f"at_least {self.at_least} is more than its {len(self.of)} rules")
        return self


class ScoreItem(_Model):
    weight: int = Field(ge=1)
    rule: Rule


class ScoreSpec(_Model):
    at_least: int = Field(ge=1, description="met when the met items' weights add up to N")
    items: dict[Name, ScoreItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _reachable(self) -> ScoreSpec:
        total = sum(item.weight for item in self.items.values())
        if self.at_least > total:
            raise ValueError(f"at_least {self.at_least} is more than the weights' sum {total}")
        return self


class ScoreRule(_Combinator):
    """A weighted score: met at ≥ N; not-met when some item was assessed (a counting fact
    examined) but the sum is short; unknown when nothing was assessed."""

    score: ScoreSpec


class IfRule(_Combinator):
    """`then` when `if` is met or unknown (unsure is never in the patient's favour);
    `else` when `if` is not met."""

    if_: Rule = Field(alias="if")
    then: Rule
    else_: Literal["met", "not-met", "unknown", "clear"] = Field("clear", alias="else")


RULE_KEYS: dict[str, type[_Model]] = {
    "lab": LabRule,
    "measure": MeasureRule,
    "condition": ConditionRule,
    "procedure": ProcedureRule,
    "family_history": FamilyHistoryRule,
    "exposure": ExposureRule,
    "criterion": CriterionRule,
    "age": AgeRule,
    "gender": GenderRule,
    "deceased": DeceasedRule,
    "all": AllRule,
    "any": AnyRule,
    "not": NotRule,
    "at_least": AtLeastRule,
    "score": ScoreRule,
    "if": IfRule,
}
_TAG = "{} rule"


def _kind_of(value: Any, keys: Mapping[str, type]) -> str | None:
    if isinstance(value, dict):
        return next((_TAG.format(k) for k in keys if k in value), None)
    return next((_TAG.format(k) for k, model in keys.items() if isinstance(value, model)), None)


def _tagged(keys: dict[str, type[_Model]], error_type: str, message: str) -> Any:
    """The union of ``keys``' models, each told apart by the key a mapping has."""
    return Annotated[
        Union[tuple(Annotated[m, Tag(_TAG.format(k))] for k, m in keys.items())],  # noqa: UP007
        Discriminator(
            lambda value: _kind_of(value, keys),
            custom_error_type=error_type,
            custom_error_message=message,
        ),
    ]


if TYPE_CHECKING:  # the union that RULE_KEYS builds at run time, spelt out for mypy
    Rule: TypeAlias = (
        LabRule
        | MeasureRule
        | ConditionRule
        | ProcedureRule
        | FamilyHistoryRule
        | ExposureRule
        | CriterionRule
        | AgeRule
        | GenderRule
        | DeceasedRule
        | AllRule
        | AnyRule
        | NotRule
        | AtLeastRule
        | ScoreRule
        | IfRule
    )
else:
    Rule = _tagged(
        RULE_KEYS, "rule_kind", "a rule is a mapping with one of: " + ", ".join(RULE_KEYS)
    )
for _model in (AllRule, AnyRule, NotRule, AtLeastRule, ScoreItem, ScoreRule, IfRule):
    _model.model_rebuild()


# --------------------------------------------------------------------------- definitions


class UnitSpec(_Model):
    scale: float = 1.0
    offset: float = 0.0


class Answers(_Model):
    positive: list[str] = Field(default_factory=list, description="`system|code` answers")
    negative: list[str] = Field(default_factory=list)
    indeterminate: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keys(self) -> Answers:
        for code in (*self.positive, *self.negative, *self.indeterminate):
            if "|" not in code:
                raise ValueError(f"{code!r} is not system|code")
        return self


class Words(_Model):
    positive: list[str] = Field(default_factory=list)
    negative: list[str] = Field(default_factory=list)


class Band(_Model):
    below: float | None = Field(None, description="values below this (the last band: none)")
    result: Literal["positive", "negative", "indeterminate"]


class LabSpec(_Model):
    """A named lab test: its value set and how its results are read."""

    valueset: str
    unit: str | None = Field(None, description="the unit thresholds are written in")
    units: dict[str, UnitSpec] | None = Field(
        None,
        description="only these spellings are read (lower-cased, spaces removed; the coding's "
        "code when listed, else its unit; a valueString '[comparator] number unit' too), "
        "each with scale/offset into `unit`",
    )
    kind: Literal["quantity", "qualitative", "titer", "viral_load", "dipstick"] = Field(
        "quantity", description="viral_load: a quantity above 0 without '<' is detected"
    )
    answers: Answers | None = Field(
        None,
        description="coded answers; with answers, positive/negative read only what is declared "
        "here (answers, words, flags, bands), else the built-in reading (reference range, "
        "flags H/HH/A/AA/POS/DET, words searched in the text)",
    )
    words: Words | None = Field(None, description="texts equal (trimmed, lower-case) to these")
    flags: Words | None = Field(None, description="interpretation codes, read with no value")
    bands: list[Band] | None = Field(None, description="quantitative cut-offs, ascending")

    @model_validator(mode="after")
    def _declared(self) -> LabSpec:
        if (self.words or self.flags or self.bands) and self.answers is None:
            raise ValueError("words, flags and bands need answers (the declared reading)")
        if self.units is not None and not self.unit:
            raise ValueError("units need the unit they convert into")
        if self.bands and (not self.units or any(b.below is None for b in self.bands[:-1])):
            raise ValueError("bands need units, and every band but the last a 'below'")
        return self


class DrugSpec(_Model):
    """A drug: a value set of codes and names matched as whole words in any text."""

    valueset: str
    names: list[str] = Field(default_factory=list)
    intervals: Literal["day", "period"] = Field(
        "day",
        description="day: an administration on its date (period end), a statement to its end, "
        "an active request ongoing; period: each record from its own first date to its end",
    )
    supply_duration: bool = Field(
        False,
        description="period: a finished MedicationRequest without validityPeriod.end lasts "
        "expectedSupplyDuration × (1 + numberOfRepeatsAllowed) days",
    )

    @model_validator(mode="after")
    def _supply(self) -> DrugSpec:
        if self.supply_duration and self.intervals != "period":
            raise ValueError("supply_duration needs intervals: period")
        return self


class Ratio(_Model):
    numerator: str = Field(description="a lab")
    denominator: str = Field(description="a lab")
    denominator_power: int = Field(1, ge=1)
    round: int | None = Field(None, ge=0, description="decimals, rounding half up")


class MeasureSpec(_Model):
    """A value per day: a direct result, else computed from labs measured that day."""

    unit: str
    lab: str | None = Field(None, description="a lab giving the value directly")
    ratio: Ratio | None = None

    @model_validator(mode="after")
    def _source(self) -> MeasureSpec:
        if self.lab is None and self.ratio is None:
            raise ValueError("give lab, ratio or both")
        return self


class Inclusion(_Model):
    label: str | None = None
    rule: Rule
    not_met: Literal["review", "excludes"] = Field(
        "review", description="excludes: known and not met excludes the patient"
    )


class OutcomeRule(_Model):
    outcome: Literal["excluded", "review"] = Field(
        description="when the rule is met; an unknown answer gives review"
    )
    rule: Rule


class RulesExclusion(_Model):
    """Rules in order; the worst outcome wins."""

    label: str | None = None
    rules: list[OutcomeRule] = Field(min_length=1)


class WashoutExclusion(_Model):
    """Last exposure day + N calendar months > D: washout until then (ongoing: last day = D)."""

    label: str | None = None
    washout: str = Field(description="a drug named in medications:")
    months: int = Field(ge=1)


EXCLUSION_KEYS: dict[str, type[_Model]] = {"rules": RulesExclusion, "washout": WashoutExclusion}
if TYPE_CHECKING:  # the union that EXCLUSION_KEYS builds at run time, spelt out for mypy
    Exclusion: TypeAlias = RulesExclusion | WashoutExclusion
else:
    Exclusion = _tagged(EXCLUSION_KEYS, "exclusion_kind", "an exclusion has rules: or washout:")


class PerMetChild(_Model):
    per_met_child: str = Field(description="path of an at_least rule")
    points: int


class PerScorePoint(_Model):
    per_score_point: str = Field(description="path of a score rule")
    points: int


class RuleMet(_Model):
    rule_met: str = Field(description="path of a rule")
    points: int


class Recency(_Model):
    recency: list[str] = Field(min_length=1, description="paths; their latest evidence date")
    within_days: dict[int, int] = Field(description="days → points; the smallest that holds")


class PerUnknown(_Model):
    per_unknown: list[str] = Field(min_length=1, description="paths")
    points: int


class PerUnknownChild(_Model):
    per_unknown_child: str = Field(description="path of an at_least rule")
    points: int


RANK_KEYS: dict[str, type[_Model]] = {
    "per_met_child": PerMetChild,
    "per_score_point": PerScorePoint,
    "rule_met": RuleMet,
    "recency": Recency,
    "per_unknown": PerUnknown,
    "per_unknown_child": PerUnknownChild,
}
if TYPE_CHECKING:  # the union that RANK_KEYS builds at run time, spelt out for mypy
    RankTerm: TypeAlias = (
        PerMetChild | PerScorePoint | RuleMet | Recency | PerUnknown | PerUnknownChild
    )
else:
    RankTerm = _tagged(RANK_KEYS, "rank_kind", "a ranking term has one of: " + ", ".join(RANK_KEYS))

SEARCHABLE = Literal["Condition", "Observation", "Procedure", "FamilyMemberHistory"]


class Search(_Model):
    resource: SEARCHABLE
    valuesets: list[str] = Field(default_factory=list)
    labs: list[str] = Field(default_factory=list)


class Server(_Model):
    candidate_searches: list[Search] = Field(min_length=1)
    patients_per_request: int = Field(20, ge=1, le=200)


class Funnel(_Model):
    pool: str = Field(description="the label id of the pool step")


class TrialFile(_Model):
    """A trial: one YAML file in queries/."""

    trial: Name = Field(description="the id: the file's stem; used in outputs, state, Group id")
    title: str = Field(description="the trial's name as people read it")
    version: str = Field(description="the version of this definition (quote dates)")
    references: dict[str, str] = Field(
        default_factory=dict, description="free text: the rules page, codebook, registry entry"
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="id → plain words, for every id a person reads: inclusions, exclusions, "
        "sub-rules, the pool step",
    )
    labs: dict[Name, LabSpec] = Field(default_factory=dict, description="named lab tests")
    medications: dict[Name, DrugSpec] = Field(default_factory=dict, description="named drugs")
    measures: dict[Name, MeasureSpec] = Field(
        default_factory=dict, description="values computed from several labs (BMI)"
    )
    candidate_pool: Rule = Field(
        description="who is listed at all (met or unknown); everyone else is not-a-candidate"
    )
    inclusions: dict[Name, Inclusion] = Field(
        min_length=1, description="in order: the funnel follows it"
    )
    exclusions: dict[Name, Exclusion] = Field(default_factory=dict, description="in order")
    ranking: list[RankTerm] = Field(
        default_factory=list, description="terms added up to rank within a status"
    )
    funnel: Funnel | None = Field(None, description="labels of the funnel's steps")
    server: Server | None = Field(None, description="how a live server is searched")
    icd_without_dot: Literal["counts", "ignored"] = Field(
        "counts",
        description="an ICD code sent without its dot (E119 for E11.9): counts as the "
        "dotted code, or is ignored (a page that matches codes 'as published')",
    )


class SiteCode(_Model):
    """One local code: a coding as the site's systems send it."""

    system: str = Field(min_length=1, description="the code system URI")
    code: str = Field(min_length=1, description="the code")
    display: str | None = Field(None, description="what it means, for people")


class SiteFile(_Model):
    """A site file (``--site FILE``): local codes added to named value sets of the trials,
    without editing them (most hospitals report some labs under local codes)."""

    site: str | None = Field(None, description="the site's name, for people")
    valuesets: dict[str, list[SiteCode]] = Field(
        min_length=1, description="value set name → the local codes it also holds"
    )


_MODELS: tuple[type[BaseModel], ...] = (
    *RULE_KEYS.values(),
    *EXCLUSION_KEYS.values(),
    *RANK_KEYS.values(),
    AgeBounds,
    Range,
    ScoreItem,
    ScoreSpec,
    UnitSpec,
    Answers,
    Words,
    Band,
    LabSpec,
    DrugSpec,
    Ratio,
    MeasureSpec,
    Inclusion,
    OutcomeRule,
    Search,
    Server,
    Funnel,
    TrialFile,
    SiteCode,
    SiteFile,
)
VOCABULARY = frozenset(
    name
    for model in _MODELS
    for key, info in model.model_fields.items()
    for name in (info.alias or key,)
)


# --------------------------------------------------------------------------- the loaded trial


_NAMES_REMEMBERED = 4096


@dataclass(frozen=True, eq=False)
class Drug:
    """A drug of the trial, ready to match: codes, then names as whole words."""

    name: str
    spec: DrugSpec
    valueset: ValueSet
    pattern: re.Pattern[str] | None
    # The name found in each text searched (bounded): records repeat a few drug names,
    # and searching them was a third of evaluating a common-disease trial's pool.
    _named: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)

    def matches(self, codes, names) -> str | None:
        """What identified the drug (a code or a name), or None."""
        code = self.valueset.match(codes)
        if code:
            return code.key
        if self.pattern:
            for text in names:
                found = self.name_in(text)
                if found:
                    return f"name '{found}' in {text!r}"
        return None

    def name_in(self, text: str) -> str | None:
        """The first of the drug's names in ``text`` as a whole word (any case), or None.

        >>> drug = Drug("x", None, None, re.compile(r"\\b(rituximab)\\b", re.I))
        >>> drug.name_in("Rituximab 100 MG"), drug.name_in("rituximabs")
        ('Rituximab', None)
        """
        named = self._named
        if text not in named:
            if len(named) >= _NAMES_REMEMBERED:
                named.clear()
            found = self.pattern.search(text) if self.pattern else None
            named[text] = found.group(0) if found else None
        return named[text]


@dataclass(frozen=True, eq=False)
class Trial:
    """A validated trial with its value sets and drugs resolved (what the engine reads)."""

    spec: TrialFile
    source: str
    valuesets: dict[str, ValueSet]
    drugs: dict[str, Drug]
    server: ServerPlan | None = None
    lines: dict[tuple, int] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return self.spec.trial

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def version(self) -> str:
        return self.spec.version

    def label(self, key: str) -> str:
        """The plain words for an id (an inclusion, exclusion, sub-rule, lab, drug)."""
        spec = self.spec
        own = spec.inclusions.get(key) or spec.exclusions.get(key)
        return (own.label if own is not None else None) or spec.labels.get(key, key)

    def lab(self, name: str) -> tuple[LabSpec, ValueSet]:
        spec = self.spec.labs[name]
        return spec, self.valuesets[spec.valueset]


# --------------------------------------------------------------------------- reading YAML


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: 10x


def _compose(text: str, where: str) -> tuple[Any, yaml.Node]:
    """The document and its node tree (for line numbers); duplicate keys are refused."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise TrialError([f"{where}: the file is empty"])
        _no_duplicate_keys(node, where)
        return loader.construct_document(node), node
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise TrialError([f"{where}{line}: not valid YAML ({problem})"]) from None
    finally:
        loader.dispose()


def _no_duplicate_keys(node: yaml.Node, where: str) -> None:
    stack = [node]
    seen_nodes: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        raise TrialError(
                            [f"{where}:{key.start_mark.line + 1}: {key.value}: duplicate key"]
                        )
                    keys.add(key.value)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _line(node: yaml.Node, loc: tuple) -> int:
    """The 1-based line of the entry at ``loc`` (union tags skipped), or its nearest parent."""
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(part, str) and part.endswith(" rule"):
            continue
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not match:
                break
            key, node = match[0]
            line = key.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def dotted(loc: tuple) -> str:
    """A pydantic location as a dotted path (union tags left out).

    >>> dotted(("exclusions", "hiv", "rules rule", "rules", 1, "rule", "lab rule", "lab"))
    'exclusions.hiv.rules[1].rule.lab'
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.endswith(" rule"):
            out += f".{part}" if out else part
    return out


def _message(error: ErrorDetails) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), VOCABULARY, n=1, cutoff=0.6)
        return "unknown key" + (f"; did you mean {close[0]}?" if close else "")
    if kind == "missing":
        return "required key missing"
    return error["msg"].removeprefix("Value error, ")


# --------------------------------------------------------------------------- resolving names


_VALUESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class _Checker:
    """The second pass: every name the file uses exists; labels, paths and plans hold."""

    def __init__(self, spec: TrialFile, valueset_dir: Path):
        self.spec = spec
        self.valueset_dir = valueset_dir
        self.valuesets: dict[str, ValueSet] = {}
        self.problems: list[tuple[tuple, str]] = []

    def fail(self, loc: tuple, message: str) -> None:
        self.problems.append((loc, message))

    def known(self, name: str, names, what: str, loc: tuple) -> bool:
        if name in names:
            return True
        close = difflib.get_close_matches(name, list(names), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(sorted(names))}"
        self.fail(loc, f"unknown {what} {name!r}{hint}")
        return False

    def valueset(self, name: str, loc: tuple) -> None:
        if name in self.valuesets:
            return
        if not _VALUESET_NAME.fullmatch(name):
            self.fail(
                loc, f"value set name {name!r} must be a plain file name (letters, digits, . _ -)"
            )
            return
        try:
            self.valuesets[name] = load_valueset(self.valueset_dir / f"{name}.json")
        except ValueSetError as error:
            self.fail(loc, str(error))
        except (KeyError, TypeError, AttributeError, OSError) as error:
            self.fail(loc, f"value set {name!r} is not a usable FHIR ValueSet ({error})")

    def check(self) -> None:
        spec = self.spec
        for name, lab in spec.labs.items():
            self.valueset(lab.valueset, ("labs", name, "valueset"))
        for name, drug in spec.medications.items():
            self.valueset(drug.valueset, ("medications", name, "valueset"))
        for name, measure in spec.measures.items():
            loc: tuple[str | int, ...] = ("measures", name)
            if measure.lab is not None:
                self.known(measure.lab, spec.labs, "lab", (*loc, "lab"))
            if measure.ratio is not None:
                for part in ("numerator", "denominator"):
                    self.known(getattr(measure.ratio, part), spec.labs, "lab", (*loc, "ratio"))
        self.rule(spec.candidate_pool, ("candidate_pool",))
        for name, inclusion in spec.inclusions.items():
            self.rule(inclusion.rule, ("inclusions", name, "rule"))
            self.labelled(name, ("inclusions", name))
        self.no_cycles()
        for name, exclusion in spec.exclusions.items():
            loc = ("exclusions", name)
            self.labelled(name, loc)
            if isinstance(exclusion, WashoutExclusion):
                self.known(exclusion.washout, spec.medications, "drug", (*loc, "washout"))
            else:
                for i, outcome in enumerate(exclusion.rules):
                    self.rule(outcome.rule, (*loc, "rules", i, "rule"))
        for i, term in enumerate(spec.ranking):
            self.rank_term(term, ("ranking", i))
        if spec.funnel is not None:
            self.known(spec.funnel.pool, spec.labels, "label", ("funnel", "pool"))
        if spec.server is not None:
            for i, search in enumerate(spec.server.candidate_searches):
                loc = ("server", "candidate_searches", i)
                for name in search.valuesets:
                    self.valueset(name, (*loc, "valuesets"))
                for name in search.labs:
                    self.known(name, spec.labs, "lab", (*loc, "labs"))

    def labelled(self, name: str, loc: tuple) -> None:
        own = self.spec.inclusions.get(name) or self.spec.exclusions.get(name)
        if name not in self.spec.labels and (own is None or own.label is None):
            self.fail(loc, f"{name!r} has no label (labels: or label:)")

    def rule(self, rule, loc: tuple) -> None:
        spec = self.spec
        if isinstance(rule, (ConditionRule, ProcedureRule, FamilyHistoryRule)):
            key = next(k for k in ("condition", "procedure", "family_history") if hasattr(rule, k))
            self.valueset(getattr(rule, key), (*loc, key))
        if isinstance(rule, (ConditionRule, LabRule)) and rule.unless_followed_by:
            self.known(rule.unless_followed_by, spec.labs, "lab", (*loc, "unless_followed_by"))
        if isinstance(rule, LabRule) and self.known(rule.lab, spec.labs, "lab", (*loc, "lab")):
            lab = spec.labs[rule.lab]
            test = rule.test
            if test in (*VALUE_TESTS, "low") and not lab.unit:
                self.fail((*loc, test), f"lab {rule.lab!r} has no unit, so {test} cannot be read")
        if isinstance(rule, MeasureRule):
            self.known(rule.measure, spec.measures, "measure", (*loc, "measure"))
        if isinstance(rule, ExposureRule):
            self.known(rule.exposure, spec.medications, "drug", (*loc, "exposure"))
        if isinstance(rule, CriterionRule):
            self.known(rule.criterion, spec.inclusions, "inclusion", (*loc, "criterion"))
        for path, child in children(rule):
            self.rule(child, (*loc, *path))
        if isinstance(rule, (AtLeastRule, ScoreRule)):
            for name in rule.of if isinstance(rule, AtLeastRule) else rule.score.items:
                if name not in spec.labels:
                    self.fail(loc, f"{name!r} has no label in labels:")

    def no_cycles(self) -> None:
        refs = {
            name: {r.criterion for r in walk(inc.rule) if isinstance(r, CriterionRule)}
            for name, inc in self.spec.inclusions.items()
        }
        for start in refs:
            seen, todo = set(), list(refs[start])
            while todo:
                current = todo.pop()
                if current == start:
                    self.fail(("inclusions", start), "refers to itself through criterion:")
                    break
                if current not in seen:
                    seen.add(current)
                    todo.extend(refs.get(current, ()))

    def rank_term(self, term, loc: tuple) -> None:
        key = next(iter(type(term).model_fields))
        paths = getattr(term, key)
        for path in paths if isinstance(paths, list) else [paths]:
            node = resolve(self.spec, path)
            if node is None:
                self.fail((*loc, key), f"path {path!r} names no inclusion or rule")
            elif key in ("per_met_child", "per_unknown_child") and not isinstance(
                node, AtLeastRule
            ):
                self.fail((*loc, key), f"{path!r} is not an at_least rule")
            elif key == "per_score_point" and not isinstance(node, ScoreRule):
                self.fail((*loc, key), f"{path!r} is not a score rule")


def children(rule) -> list[tuple[tuple, Any]]:
    """A rule's sub-rules, each with its location relative to the rule.

    >>> [key for key, _ in children(AnyRule(any=[DeceasedRule(deceased=True)]))]
    [('any', 0)]
    """
    if isinstance(rule, AllRule):
        return [(("all", i), r) for i, r in enumerate(rule.all)]
    if isinstance(rule, AnyRule):
        return [(("any", i), r) for i, r in enumerate(rule.any)]
    if isinstance(rule, NotRule):
        return [(("not",), rule.not_)]
    if isinstance(rule, AtLeastRule):
        return [(("of", k), r) for k, r in rule.of.items()]
    if isinstance(rule, ScoreRule):
        return [(("score", "items", k, "rule"), i.rule) for k, i in rule.score.items.items()]
    if isinstance(rule, IfRule):
        return [(("if",), rule.if_), (("then",), rule.then)]
    return []


def walk(rule):
    """The rule and every rule inside it, depth first."""
    yield rule
    for _, child in children(rule):
        yield from walk(child)


def node_id(parent, key: tuple, child) -> str | None:
    """A sub-rule's id: its key under at_least/score, else its own ``id``."""
    if isinstance(parent, (AtLeastRule, ScoreRule)):
        return key[-2] if isinstance(parent, ScoreRule) else key[-1]
    return child.id


def find(rule, wanted: str):
    """The first rule inside ``rule`` (depth first) whose id is ``wanted``."""
    for key, child in children(rule):
        if node_id(rule, key, child) == wanted:
            return child
        found = find(child, wanted)
        if found is not None:
            return found
    return None


def resolve(spec: TrialFile, path: str):
    """``age`` is an inclusion's rule; ``activity.recent`` the rule with id recent inside it."""
    head, _, rest = path.partition(".")
    inclusion = spec.inclusions.get(head)
    if inclusion is None:
        return None
    node = inclusion.rule
    for part in rest.split(".") if rest else ():
        node = node if node.id == part else find(node, part)
        if node is None:
            return None
    return node


# --------------------------------------------------------------------------- loading


def _valueset_dir(path: Path) -> Path:
    """``valuesets/`` beside the file, else beside its folder."""
    for folder in (path.parent, path.parent.parent):
        if (folder / "valuesets").is_dir():
            return folder / "valuesets"
    return path.parent / "valuesets"


def _validated(model, text: str, where: str) -> tuple[Any, yaml.Node]:
    """A YAML document validated by ``model``; every problem with its file, line and path."""
    data, node = _compose(text, where)
    try:
        return model.model_validate(data), node
    except ValidationError as error:
        raise TrialError(
            [
                f"{where}:{_line(node, e['loc'])}: {dotted(e['loc'])}: {_message(e)}"
                for e in error.errors()
            ]
        ) from None


def parse_trial(
    text: str, where: str, stem: str, valueset_dir: Path, site: SiteFile | None = None
) -> Trial:
    """Validate a trial file's text completely; every problem is a :class:`TrialError`.
    ``site``'s local codes join the value sets of the same name that the trial reads."""
    spec, node = _validated(TrialFile, text, where)
    checker = _Checker(spec, valueset_dir)
    if spec.trial != stem:
        checker.fail(("trial",), f"the id must be the file's name {stem!r}")
    checker.check()
    for name, local in site.valuesets.items() if site else ():
        if name in checker.valuesets:
            found = checker.valuesets[name]
            added = {f"{system}|{canonical_code(system, c.code)}" for c in local
                     for system in (canonical_system(c.system),)}  # fmt: skip
            checker.valuesets[name] = replace(found, codes=found.codes | added)
    server = None
    if spec.server is not None and not checker.problems:
        from .plan import completeness_problem, server_plan

        problem = completeness_problem(spec, checker.valuesets)
        if problem:
            checker.fail(("server", "candidate_searches"), problem)
        else:
            server = server_plan(spec, checker.valuesets)
    if checker.problems:
        raise TrialError(
            [f"{where}:{_line(node, loc)}: {dotted(loc)}: {why}" for loc, why in checker.problems]
        )
    if spec.icd_without_dot == "ignored":
        checker.valuesets = {
            name: replace(vs, dotted_only=True) for name, vs in checker.valuesets.items()
        }
    drugs = {
        name: Drug(
            name,
            drug,
            checker.valuesets[drug.valueset],
            re.compile(r"\b(" + "|".join(map(re.escape, drug.names)) + r")\b", re.I)
            if drug.names
            else None,
        )
        for name, drug in spec.medications.items()
    }
    return Trial(spec, where, checker.valuesets, drugs, server)


def queries_dir() -> Path:
    """The trial definitions shipped with fhir-cohort (checkout or installed wheel)."""
    checkout = Path(__file__).resolve().parents[3] / "queries"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("fhir_cohort") / "_bundled" / "queries"))


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrialError([f"{what} {path} does not exist"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise TrialError([f"{path}: cannot be read ({error})"]) from None


def load_site(path: Path) -> tuple[SiteFile, dict[str, int]]:
    """A site file, validated as strictly as a trial; and the line of each value set."""
    site, node = _validated(SiteFile, _read(path, "site file"), path.name)
    return site, {name: _line(node, ("valuesets", name)) for name in site.valuesets}


def check_site(path: Path, lines: dict[str, int], trials: list[Trial]) -> None:
    """Every value set the site file names must be read by a trial screened: a name no
    trial reads (a typo) is exit 2, never silently ignored."""
    read = {name for trial in trials for name in trial.valuesets}
    problems = []
    for name, line in lines.items():
        if name not in read:
            close = difflib.get_close_matches(name, sorted(read), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(
                f"{path.name}:{line}: valuesets.{name}: no trial screened reads this value set"
                + hint
            )
    if problems:
        raise TrialError(problems)


def load(name_or_path: str, folder: Path | None = None, site: SiteFile | None = None) -> Trial:
    """Load a trial by name (a file in ``folder``) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        folder = folder or queries_dir()
        path = folder / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.yaml"))
            raise TrialError([f"unknown trial {name_or_path!r}; known trials: {', '.join(known)}"])
    text = _read(path, "trial file")
    return parse_trial(text, path.name, path.stem, _valueset_dir(path), site)
