"""What a trial reads, derived from its criteria: types, codes, the pool gate, the server plan.

Rule: nothing here is written by hand in a trial file except the server's
``candidate_searches``. The resource types and codes a trial reads, the bits
the store records at ingest to tell who could be in the candidate pool, and
the fetch plan all follow from the leaves of the trial's rules. The server plan
must be *complete* in general terms: a patient the pool could take must be
found by the candidate searches, argued rule by rule (:func:`covered`).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import UsageError
from ..normalise.codes import canonical_code, canonical_system
from ..sources.plan import ServerPlan, ServerSearch
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
    ScoreRule,
    TrialFile,
    WashoutExclusion,
    children,
    walk,
)
from .valuesets import ValueSet

MEDICATION_TYPES = ("MedicationStatement", "MedicationRequest", "MedicationAdministration")
ALWAYS_KEPT = frozenset({"Patient", "Medication", *MEDICATION_TYPES})
CODED = frozenset({"Condition", "Observation", "Procedure", "FamilyMemberHistory"})
# Resources that must name their patient (subject/patient).
PATIENT_DATA = (ALWAYS_KEPT | CODED) - {"Patient", "Medication"}
KEPT = 1  # bit 0; bit i + 1: the i-th value set of the pool's leaves
_MEMO_MAX = 100_000  # entries a gate's memo holds before it starts again


def rules_of(spec: TrialFile) -> Iterator:
    """Every rule of the trial: pool, inclusions, exclusions (depth first)."""
    yield from walk(spec.candidate_pool)
    for inclusion in spec.inclusions.values():
        yield from walk(inclusion.rule)
    for exclusion in spec.exclusions.values():
        for part in getattr(exclusion, "rules", ()):
            yield from walk(part.rule)


def leaf_valuesets(spec: TrialFile, rule) -> list[tuple[str, str]]:
    """(resource type, value set) pairs one rule reads itself (not its sub-rules)."""
    found: list[tuple[str, str]] = []
    if isinstance(rule, ConditionRule):
        found.append(("Condition", rule.condition))
    elif isinstance(rule, ProcedureRule):
        found.append(("Procedure", rule.procedure))
    elif isinstance(rule, FamilyHistoryRule):
        found.append(("FamilyMemberHistory", rule.family_history))
    labs = []
    if isinstance(rule, LabRule):
        labs.append(rule.lab)
    if isinstance(rule, MeasureRule):
        labs += measure_labs(spec, rule.measure)
    if isinstance(rule, (ConditionRule, LabRule)) and rule.unless_followed_by:
        labs.append(rule.unless_followed_by)
    found += [("Observation", spec.labs[lab].valueset) for lab in labs]
    return found


def measure_labs(spec: TrialFile, name: str) -> list[str]:
    measure = spec.measures[name]
    labs = [measure.lab] if measure.lab else []
    if measure.ratio:
        labs += [measure.ratio.numerator, measure.ratio.denominator]
    return labs


def resource_types(spec: TrialFile) -> tuple[str, ...]:
    """Every resource type the trial reads (Patient always), in a stable order."""
    found = {"Patient"}
    for rule in rules_of(spec):
        found.update(kind for kind, _ in leaf_valuesets(spec, rule))
        if isinstance(rule, ExposureRule):
            found.update({*MEDICATION_TYPES, "Medication"})
    if any(isinstance(e, WashoutExclusion) for e in spec.exclusions.values()):
        found.update({*MEDICATION_TYPES, "Medication"})
    order = ("Patient", *sorted(CODED), *MEDICATION_TYPES, "Medication")
    return tuple(kind for kind in order if kind in found)


def codes(spec: TrialFile, valuesets: dict[str, ValueSet]) -> dict[str, list[str]]:
    """Per resource type, every ``system|code`` (and ``system|prefix*``) the trial reads."""
    wanted: dict[str, set[str]] = {}
    pairs = [pair for rule in rules_of(spec) for pair in leaf_valuesets(spec, rule)]
    pairs += [("Observation", lab.valueset) for lab in spec.labs.values()]
    for drug in spec.medications.values():
        pairs += [(kind, drug.valueset) for kind in (*MEDICATION_TYPES, "Medication")]
    for kind, name in pairs:
        valueset = valuesets[name]
        keys = wanted.setdefault(kind, set())
        keys.update(valueset.codes)
        keys.update(f"{system}|{prefix}*" for system, prefix in valueset.prefixes)
    return {kind: sorted(keys) for kind, keys in sorted(wanted.items())}


# --------------------------------------------------------------------------- completeness


def covered(spec: TrialFile, rule, searched: set[str]) -> bool:
    """Would the candidate searches find every patient for whom ``rule`` is met?

    A leaf is covered when all its value sets are searched; ``any`` when every
    sub-rule is; ``all`` when some sub-rule is; ``at_least N`` when fewer than N
    sub-rules are not; a score when the weights of the uncovered items add up to
    less than N; ``not`` and patient attributes never.
    """
    if isinstance(rule, CriterionRule):
        return covered(spec, spec.inclusions[rule.criterion].rule, searched)
    if isinstance(rule, (AgeRule, GenderRule, DeceasedRule, ExposureRule, NotRule)):
        return False
    parts = [child for _, child in children(rule)]
    if isinstance(rule, AnyRule):
        return all(covered(spec, child, searched) for child in parts)
    if isinstance(rule, AllRule):
        return any(covered(spec, child, searched) for child in parts)
    if isinstance(rule, AtLeastRule):
        return sum(not covered(spec, child, searched) for child in parts) < rule.at_least
    if isinstance(rule, ScoreRule):
        short = sum(
            item.weight
            for item in rule.score.items.values()
            if not covered(spec, item.rule, searched)
        )
        return short < rule.score.at_least
    if isinstance(rule, IfRule):
        return rule.else_ not in ("met", "unknown") and covered(spec, rule.then, searched)
    own = leaf_valuesets(spec, rule)
    if isinstance(rule, (ConditionRule, LabRule)) and rule.unless_followed_by:
        own = own[:-1]  # the follow-up lab only takes hits away
    return bool(own) and all(name in searched for _, name in own)


def _searched(spec: TrialFile) -> set[str]:
    assert spec.server is not None
    names: set[str] = set()
    for search in spec.server.candidate_searches:
        names.update(search.valuesets)
        names.update(spec.labs[lab].valueset for lab in search.labs)
    return names


def completeness_problem(spec: TrialFile, valuesets: dict[str, ValueSet]) -> str | None:
    """Why the candidate searches could miss a pool patient, or None when they cannot."""
    if covered(spec, spec.candidate_pool, _searched(spec)):
        return None
    return (
        "the candidate searches do not cover the candidate pool: a patient it takes could "
        "be missed (search the value sets of an `any` rule's every part, of one part of an "
        "`all`, of all but N − 1 parts of an `at_least N`)"
    )


def server_plan(spec: TrialFile, valuesets: dict[str, ValueSet]) -> ServerPlan:
    """Candidate searches from the file; the fetch plan derived from what the trial reads."""
    assert spec.server is not None

    def search(kind: str, names, include: str | None = None) -> ServerSearch:
        return ServerSearch(kind, tuple(valuesets[n] for n in dict.fromkeys(names)), include)

    candidates = tuple(
        search(s.resource, [*s.valuesets, *(spec.labs[lab].valueset for lab in s.labs)])
        for s in spec.server.candidate_searches
    )
    procedures = [
        name
        for rule in rules_of(spec)
        for kind, name in leaf_valuesets(spec, rule)
        if kind == "Procedure"
    ]
    fetch = []
    for kind in resource_types(spec):
        if kind == "Observation":
            fetch.append(search(kind, [lab.valueset for lab in spec.labs.values()]))
        elif kind == "Procedure":
            fetch.append(search(kind, procedures))
        elif kind in MEDICATION_TYPES:
            fetch.append(search(kind, (), "medication"))
        elif kind != "Medication":
            fetch.append(search(kind, ()))
    return ServerPlan(candidates, tuple(fetch), spec.server.patients_per_request)


# --------------------------------------------------------------------------- the pool gate


class PoolGate:
    """Which resources could put a patient in the candidate pool, as bits set at ingest.

    ``classify`` gives 0 for a resource the trial never reads, else ``KEPT`` plus
    one bit per value set of the pool's leaves that holds its code. OR-ing a
    patient's bits, ``may_be_candidate`` tells without reading a value whether
    the pool rule could be met (or unknown) at all. Errs towards True. A record
    whose code cannot be read (a wrong JSON type, a null, an Observation without
    one) may be any code: it gets every bit, so the patient is evaluated and the
    record weighs on every rule of its type.
    """

    def __init__(self, spec: TrialFile, valuesets: dict[str, ValueSet]):
        self.spec = spec
        pool_sets = [
            name
            for rule in _expanded(spec, spec.candidate_pool)
            for _, name in leaf_valuesets(spec, rule)
        ]
        self.bit = {name: 1 << (i + 1) for i, name in enumerate(dict.fromkeys(pool_sets))}
        self.width = len(self.bit) + 1
        self.any_code = (1 << self.width) - 1
        read = {name for names in _trial_valuesets(spec) for name in names}
        self._sets = [(KEPT, [valuesets[n] for n in sorted(read)])]
        self._sets += [(bit, [valuesets[name]]) for name, bit in self.bit.items()]
        self._memo: dict[tuple[object, object], int] = {}
        self._pool_memo: dict[int, bool] = {}

    def _bits(self, system: object, code: object) -> int:
        if (code is not None and type(code) is not str) or (
            system is not None and type(system) is not str
        ):
            return self.any_code  # a number or true where FHIR has a string
        if not isinstance(system, str) or not isinstance(code, str):
            return 0  # valid, but without a system (or a code) it can never match
        system = canonical_system(system)
        code = canonical_code(system, code)
        key = f"{system}|{code}"
        bits = 0
        for bit, sets in self._sets:
            if any(
                key in vs.codes or any(system == s and code.startswith(p) for s, p in vs.prefixes)
                for vs in sets
            ):
                bits |= bit
        return bits

    def classify(self, resource: dict) -> int:
        kind = resource.get("resourceType")
        if kind in ALWAYS_KEPT:
            return KEPT
        if kind not in CODED:
            return 0
        if kind != "FamilyMemberHistory":
            return self._concept(resource, "code", kind == "Observation")
        items = resource.get("condition")
        if items is None:
            return 0
        if type(items) is not list:
            return self.any_code
        bits = 0
        for item in items:
            if type(item) is not dict:
                return self.any_code
            bits |= self._concept(item, "code", False)
        return bits

    def _concept(self, holder: dict, key: str, required: bool) -> int:
        concept = holder.get(key)
        if type(concept) is not dict:
            if concept is None and not required and key not in holder:
                return 0  # uncoded: it can never match
            return self.any_code  # a wrong JSON type (null included) or no required code
        codings = concept.get("coding")
        if type(codings) is not list:
            return 0 if codings is None and "coding" not in concept else self.any_code
        bits = 0
        memo = self._memo
        for coding in codings:  # the hot loop of ingest, kept inline
            if type(coding) is not dict:
                return self.any_code
            pair = (coding.get("system"), coding.get("code"))
            try:
                found = memo.get(pair)
            except TypeError:  # a list or an object where FHIR has a string
                return self.any_code
            if found is None:
                if len(memo) > _MEMO_MAX:  # bounded, not a copy of every code seen
                    memo.clear()
                found = memo[pair] = self._bits(*pair)
            if (
                not found
                and None in pair
                and (
                    ("code" in coding and pair[1] is None)
                    or ("system" in coding and pair[0] is None)
                )
            ):
                return self.any_code  # a JSON null where FHIR has a string
            bits |= found
        return bits

    def may_be_candidate(self, touches: int) -> bool:
        """Could a patient whose records' bits OR to ``touches`` meet the pool rule? A
        pure function of the bits, which few patterns cover, so each pattern's answer is
        remembered (walking the rule tree per patient was a third of deciding them)."""
        known = self._pool_memo.get(touches)
        if known is None:
            if len(self._pool_memo) > _MEMO_MAX:  # bounded, like the codes' memo
                self._pool_memo.clear()
            known = self._pool_memo[touches] = self._may(self.spec.candidate_pool, touches)
        return known

    def _may(self, rule, touches: int) -> bool:
        if isinstance(rule, CriterionRule):
            return self._may(self.spec.inclusions[rule.criterion].rule, touches)
        own = leaf_valuesets(self.spec, rule)
        if isinstance(rule, (ConditionRule, LabRule)) and rule.unless_followed_by:
            own = own[:-1]
        if own:
            return any(touches & self.bit[name] for _, name in own)
        parts = [child for _, child in children(rule)]
        if isinstance(rule, AnyRule):
            return any(self._may(child, touches) for child in parts)
        if isinstance(rule, AllRule):
            return all(self._may(child, touches) for child in parts)
        if isinstance(rule, AtLeastRule):
            return sum(self._may(child, touches) for child in parts) >= rule.at_least
        if isinstance(rule, IfRule):
            return rule.else_ in ("met", "unknown") or self._may(rule.then, touches)
        return True  # patient attributes, exposures, not, scores: cannot tell from codes


class TrialGates:
    """The pool gates of several trials screened in one pass, their bits side by side.

    >>> class Gate:
    ...     width = 2
    ...     def classify(self, resource): return resource["bits"]
    ...     def may_be_candidate(self, touches): return touches == 3
    >>> gates = TrialGates([Gate(), Gate()])
    >>> gates.classify({"bits": 3}), gates.may_be_candidate(1, 0b1100)
    (15, True)
    """

    MAX_BITS = 62  # the store keeps them in one SQLite INTEGER

    def __init__(self, gates: list):
        self.gates = gates
        self.shifts = []
        shift = 0
        for gate in gates:
            self.shifts.append(shift)
            shift += gate.width
        if shift > self.MAX_BITS:
            raise UsageError(
                f"these trials' candidate pools read {shift} value sets; one pass can gate "
                f"on at most {self.MAX_BITS}: screen them in separate runs"
            )
        if len(gates) == 1:  # the usual run: no shifting on the hot path of ingest
            self.classify = gates[0].classify  # type: ignore[method-assign]

    def classify(self, resource: dict) -> int:
        bits = 0
        for gate, shift in zip(self.gates, self.shifts, strict=True):
            bits |= gate.classify(resource) << shift
        return bits

    def may_be_candidate(self, index: int, touches: int) -> bool:
        gate = self.gates[index]
        return gate.may_be_candidate((touches >> self.shifts[index]) & ((1 << gate.width) - 1))


def _expanded(spec: TrialFile, rule) -> Iterator:
    """The rule's sub-rules, following ``criterion:`` references."""
    for part in walk(rule):
        if isinstance(part, CriterionRule):
            yield from _expanded(spec, spec.inclusions[part.criterion].rule)
        else:
            yield part


def _trial_valuesets(spec: TrialFile) -> Iterator[list[str]]:
    for rule in rules_of(spec):
        yield [name for _, name in leaf_valuesets(spec, rule)]
    yield [lab.valueset for lab in spec.labs.values()]


def merged_plan(plans: list[ServerPlan]) -> ServerPlan:
    """One server plan for several trials screened in one pass: every trial's candidate
    searches, and per resource type the union of what the trials fetch (a type one trial
    fetches whole is fetched whole).

    >>> from types import SimpleNamespace as V
    >>> a, b = V(id="a"), V(id="b")
    >>> one = ServerPlan((ServerSearch("Condition", (a,)),), (ServerSearch("Observation", (a,)),))
    >>> two = ServerPlan((ServerSearch("Condition", (b,)),), (ServerSearch("Observation", (b,)),
    ...                  ServerSearch("FamilyMemberHistory")), 10)
    >>> both = merged_plan([one, two])
    >>> [(s.resource, [v.id for v in s.valuesets]) for s in both.fetch]
    [('Observation', ['a', 'b']), ('FamilyMemberHistory', [])]
    >>> len(both.candidate_searches), both.patients_per_request
    (2, 10)
    """
    candidates: dict[tuple, ServerSearch] = {}
    for plan in plans:
        for search in plan.candidate_searches:
            key = (search.resource, tuple(v.id for v in search.valuesets), search.include)
            candidates.setdefault(key, search)
    fetch: dict[tuple[str, str | None], list[ServerSearch]] = {}
    for plan in plans:
        for search in plan.fetch:
            fetch.setdefault((search.resource, search.include), []).append(search)
    merged = []
    for (resource, include), searches in fetch.items():
        whole = any(not s.valuesets for s in searches)
        sets = {} if whole else {v.id: v for s in searches for v in s.valuesets}
        merged.append(ServerSearch(resource, tuple(sets.values()), include))
    return ServerPlan(
        tuple(candidates.values()),
        tuple(merged),
        min(plan.patients_per_request for plan in plans),
    )
