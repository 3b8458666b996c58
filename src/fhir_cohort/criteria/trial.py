"""Trial definitions: read ``queries/<trial>.yaml`` into typed, validated rules.

Rule: a trial is data. This module knows the small vocabulary a definition
may use (condition, procedure and lab rules, occasions, windows, washouts,
ranking weights; see the header of ``queries/misle.yaml``) and turns a file
into frozen dataclasses, failing with the file and the path of the bad entry.
It knows nothing about any particular trial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import yaml

from ..errors import UsageError
from ..normalise.codes import Code
from ..sources.plan import ServerPlan, ServerSearch
from .valuesets import ValueSet, ValueSetError, load_valueset


class TrialError(UsageError):
    """A trial definition cannot be used; the message says where and why."""


LAB_TESTS = (
    "positive",
    "above",
    "below",
    "at_least",
    "titer_at_least",
    "present",
    "low",
    "grade_at_least",
)


@dataclass(frozen=True, slots=True)
class LabTest:
    name: str
    valueset: ValueSet
    unit: str | None = None
    viral_load: bool = False


@dataclass(frozen=True, slots=True)
class Medication:
    name: str
    valueset: ValueSet
    names: re.Pattern[str] | None

    def matches(self, codes: tuple[Code, ...], names: tuple[str, ...]) -> str | None:
        """What identified the drug (a code or a name), or None."""
        code = self.valueset.match(codes)
        if code:
            return code.key
        if self.names:
            for text in names:
                found = self.names.search(text)
                if found:
                    return f"name '{found.group(0)}' in {text!r}"
        return None


@dataclass(frozen=True, slots=True)
class ConditionRule:
    valueset: ValueSet
    use: str = "history"  # history | current
    within_days: int | None = None
    outcome: str | None = None
    unless_followed_by: LabTest | None = None


@dataclass(frozen=True, slots=True)
class ProcedureRule:
    valueset: ValueSet
    within_days: int | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class LabRule:
    lab: LabTest
    test: str
    threshold: float | None = None
    latest: bool = False
    unless_followed_by: LabTest | None = None
    within_days: int | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class AnyRule:
    rules: tuple[Rule, ...]
    occasions: int = 1
    outcome: str | None = None


Rule = ConditionRule | ProcedureRule | LabRule | AnyRule


@dataclass(frozen=True, slots=True)
class Criterion:
    id: str
    title: str
    rule: AnyRule


@dataclass(frozen=True, slots=True)
class Descriptor:
    id: str
    title: str
    weight: int
    rule: AnyRule


@dataclass(frozen=True, slots=True)
class Activity:
    window_days: int
    min_score: int
    descriptors: tuple[Descriptor, ...]
    met_by: AnyRule


@dataclass(frozen=True, slots=True)
class Washout:
    id: str
    medication: Medication
    months: int


@dataclass(frozen=True, slots=True)
class Trial:
    id: str
    title: str
    version: str
    source: str
    min_age: int | None
    max_age: int | None
    pool: ConditionRule
    labs: dict[str, LabTest]
    acr_min_met: int
    acr: tuple[Criterion, ...]
    activity: Activity
    exclusions: dict[str, tuple[Rule, ...]]
    washouts: tuple[Washout, ...]
    ranking: dict
    server: ServerPlan | None = None

    @property
    def exclusion_ids(self) -> tuple[str, ...]:
        return (*self.exclusions, *(w.id for w in self.washouts), "deceased")

    def valuesets(self) -> list[ValueSet]:
        """Every value set the definition uses (for pre-filtering and server searches)."""
        found = [self.pool.valueset, *(lab.valueset for lab in self.labs.values())]
        found += [washout.medication.valueset for washout in self.washouts]
        rules: list[Rule] = [c.rule for c in self.acr] + [d.rule for d in self.activity.descriptors]
        rules += [self.activity.met_by] + [r for rs in self.exclusions.values() for r in rs]
        for rule in rules:
            found += rule_valuesets(rule)
        return list({valueset.id: valueset for valueset in found}.values())


def rule_valuesets(rule: Rule) -> list[ValueSet]:
    """The value sets a rule (and the rules inside it) reads."""
    if isinstance(rule, AnyRule):
        return [valueset for part in rule.rules for valueset in rule_valuesets(part)]
    if isinstance(rule, LabRule):
        found = [rule.lab.valueset]
    else:
        found = [rule.valueset]
    if getattr(rule, "unless_followed_by", None) is not None:
        found.append(rule.unless_followed_by.valueset)  # type: ignore[union-attr]
    return found


class _Reader:
    """Builds a Trial from parsed YAML, keeping the path for error messages."""

    def __init__(self, path: Path, valueset_dir: Path):
        self.path = path
        self.valueset_dir = valueset_dir
        self._valuesets: dict[str, ValueSet] = {}
        self.labs: dict[str, LabTest] = {}

    def fail(self, where: str, message: str) -> TrialError:
        return TrialError(f"{self.path}: {where}: {message}")

    def valueset(self, name: object, where: str) -> ValueSet:
        if not isinstance(name, str):
            raise self.fail(where, "a value set name is required")
        if name not in self._valuesets:
            try:
                self._valuesets[name] = load_valueset(self.valueset_dir / f"{name}.json")
            except ValueSetError as error:
                raise self.fail(where, str(error)) from None
        return self._valuesets[name]

    def lab(self, name: object, where: str) -> LabTest:
        if name not in self.labs:
            raise self.fail(where, f"unknown lab {name!r}; known: {', '.join(sorted(self.labs))}")
        return self.labs[name]  # type: ignore[index]

    def rule(self, raw: object, where: str) -> Rule:
        if not isinstance(raw, dict):
            raise self.fail(where, "a rule must be a mapping")
        outcome = raw.get("outcome")
        if outcome not in (None, "excluded", "review"):
            raise self.fail(where, f"outcome must be 'excluded' or 'review', not {outcome!r}")
        within = raw.get("within_days")
        follow = raw.get("unless_followed_by")
        followed = self.lab(follow, where) if follow is not None else None
        if "any" in raw:
            return AnyRule(
                self.rules(raw["any"], f"{where}.any"), int(raw.get("occasions", 1)), outcome
            )
        if "condition" in raw:
            use = raw.get("use", "history")
            if use not in ("history", "current"):
                raise self.fail(where, f"use must be 'history' or 'current', not {use!r}")
            return ConditionRule(
                self.valueset(raw["condition"], where), use, within, outcome, followed
            )
        if "procedure" in raw:
            return ProcedureRule(self.valueset(raw["procedure"], where), within, outcome)
        if "lab" in raw:
            tests = [t for t in LAB_TESTS if t in raw]
            if len(tests) != 1:
                raise self.fail(where, f"a lab rule needs exactly one of {', '.join(LAB_TESTS)}")
            test = tests[0]
            value = raw[test]
            threshold = None if test in ("positive", "present") else float(value)
            lab = self.lab(raw["lab"], where)
            if test in ("above", "below", "at_least") and not lab.unit:
                raise self.fail(where, f"lab {lab.name!r} has no unit, so '{test}' is meaningless")
            return LabRule(lab, test, threshold, bool(raw.get("latest")), followed, within, outcome)
        raise self.fail(where, "a rule needs one of: condition, procedure, lab, any")

    def rules(self, raw: object, where: str) -> tuple[Rule, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "a non-empty list of rules is required")
        return tuple(self.rule(item, f"{where}[{i}]") for i, item in enumerate(raw))

    def trial(self, raw: dict) -> Trial:
        for key in ("trial", "candidate_pool", "labs", "acr", "activity", "exclusions"):
            if key not in raw:
                raise self.fail(key, "this section is required")
        for name, spec in (raw.get("labs") or {}).items():
            self.labs[name] = LabTest(
                name,
                self.valueset(spec.get("valueset"), f"labs.{name}"),
                spec.get("unit"),
                bool(spec.get("viral_load")),
            )
        medications = {
            name: Medication(
                name,
                self.valueset(spec.get("valueset"), f"medications.{name}"),
                re.compile(r"\b(" + "|".join(map(re.escape, spec["names"])) + r")\b", re.I)
                if spec.get("names")
                else None,
            )
            for name, spec in (raw.get("medications") or {}).items()
        }
        pool = self.rule(raw["candidate_pool"], "candidate_pool")
        if not isinstance(pool, ConditionRule):
            raise self.fail("candidate_pool", "must be a condition rule")
        acr = raw["acr"]
        criteria = tuple(
            Criterion(
                cid,
                spec.get("title", cid),
                AnyRule(self.rules(spec.get("any"), f"acr.criteria.{cid}.any")),
            )
            for cid, spec in (acr.get("criteria") or {}).items()
        )
        activity = raw["activity"]
        descriptors = tuple(
            Descriptor(
                did,
                spec.get("title", did),
                int(spec["weight"]),
                AnyRule(self.rules(spec.get("any"), f"activity.descriptors.{did}.any")),
            )
            for did, spec in (activity.get("descriptors") or {}).items()
        )
        exclusions = {
            key: self.rules(rules, f"exclusions.{key}")
            for key, rules in (raw.get("exclusions") or {}).items()
        }
        washouts = []
        for wid, spec in (raw.get("washouts") or {}).items():
            if spec.get("medication") not in medications:
                raise self.fail(f"washouts.{wid}", f"unknown medication {spec.get('medication')!r}")
            washouts.append(Washout(wid, medications[spec["medication"]], int(spec["months"])))
        age = raw.get("age") or {}
        trial = Trial(
            id=str(raw["trial"]),
            title=str(raw.get("title", raw["trial"])),
            version=str(raw.get("version", "")),
            source=str(self.path),
            min_age=age.get("min"),
            max_age=age.get("max"),
            pool=pool,
            labs=self.labs,
            acr_min_met=int(acr.get("min_met", 4)),
            acr=criteria,
            activity=Activity(
                int(activity.get("window_days", 90)),
                int(activity.get("min_score", 4)),
                descriptors,
                AnyRule(self.rules(activity["met_by"], "activity.met_by"))
                if activity.get("met_by")
                else AnyRule(()),
            ),
            exclusions=exclusions,
            washouts=tuple(washouts),
            ranking=dict(raw.get("ranking") or {}),
        )
        if "server" not in raw:
            return trial
        server = self.server_plan(raw["server"], trial)
        return replace(trial, server=server)

    def search(self, raw: object, where: str) -> ServerSearch:
        if not isinstance(raw, dict) or not isinstance(raw.get("resource"), str):
            raise self.fail(where, "a search needs a 'resource' type")
        valuesets = [self.valueset(name, where) for name in raw.get("valuesets") or ()]
        labs = raw.get("labs")
        if labs == "all":
            labs = list(self.labs)
        valuesets += [self.lab(name, where).valueset for name in labs or ()]
        return ServerSearch(raw["resource"], tuple(valuesets), raw.get("include"))

    def server_plan(self, raw: dict, trial: Trial) -> ServerPlan:
        plan = ServerPlan(
            tuple(
                self.search(s, f"server.candidate_searches[{i}]")
                for i, s in enumerate(raw.get("candidate_searches") or ())
            ),
            tuple(
                self.search(s, f"server.fetch[{i}]") for i, s in enumerate(raw.get("fetch") or ())
            ),
            int(raw.get("patients_per_request", 20)),
        )
        searched = {vs.id for s in plan.candidate_searches for vs in s.valuesets}
        if trial.pool.valueset.id not in searched:
            raise self.fail(
                "server.candidate_searches",
                f"the pool's value set {trial.pool.valueset.id!r} is not searched",
            )
        unsearched = [
            c.id for c in trial.acr if not {vs.id for vs in rule_valuesets(c.rule)} <= searched
        ]
        if len(unsearched) >= trial.acr_min_met:
            raise self.fail(
                "server.candidate_searches",
                f"{len(unsearched)} ACR criteria ({', '.join(unsearched)}) are not fully searched, "
                f"so a patient meeting {trial.acr_min_met} of them would never be found",
            )
        return plan


def queries_dir() -> Path:
    """The trial definitions shipped with fhir-cohort (checkout or installed wheel)."""
    checkout = Path(__file__).resolve().parents[3] / "queries"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("fhir_cohort") / "_bundled" / "queries"))


def load_trial(name_or_path: str) -> Trial:
    """Load a trial by name (``misle``) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = queries_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in queries_dir().glob("*.yaml"))
            raise TrialError(f"unknown trial {name_or_path!r}; known trials: {', '.join(known)}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrialError(f"trial file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise TrialError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise TrialError(f"{path}: a trial definition must be a YAML mapping")
    return _Reader(path, path.parent / "valuesets").trial(raw)
