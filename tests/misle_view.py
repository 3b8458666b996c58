"""MiSLE's answers in the shape the rule tests were written against.

The rule tests (test_evaluator_rules.py and others) were written when the engine knew
MiSLE's three inclusions by name (``result.age``, ``result.acr``, ``result.activity``).
The engine now answers every trial the same way (:class:`TrialResult`, a tree of
:class:`NodeResult`); this view reads MiSLE's answer out of that tree, so the tests'
assertions stay exactly as they were. It lives in the tests: the engine knows no trial.
"""

from __future__ import annotations

from datetime import date

from fhir_cohort.criteria.results import MET
from fhir_cohort.criteria.tree import NodeResult, TrialResult


def _at_least(node: NodeResult | None) -> NodeResult | None:
    """The first ``at_least`` node in a tree (the pool reaches ACR through ``criterion``)."""
    if node is None or node.kind == "at_least":
        return node
    return next((n for p in node.parts if (n := _at_least(p)) is not None), None)


class AgeView:
    def __init__(self, result: TrialResult):
        node = result.inclusions.get("age")
        self.result = node.result if node else None
        self.age = result.age
        self.evidence = node.evidence if node else ()


class AcrView:
    def __init__(self, result: TrialResult):
        node = result.inclusions.get("acr") or _at_least(result.pool)
        assert node is not None
        self.node = node
        self.result = MET if node.value else "not-met"
        self.met = node.met
        self.count = len(node.met)
        self.criteria = {p.id: p for p in node.parts}
        self.unknown = node.unknown
        self.missing = tuple(p.id for p in node.parts if not p.value)


class ActivityView:
    def __init__(self, result: TrialResult):
        node = result.inclusions["activity"]
        sledai = node.find("sledai")
        acute = node.find("acute")
        assert node.window is not None and sledai is not None and acute is not None
        self.result = node.result
        self.score = sledai.score
        self.window_start: date = node.window[0]
        self.window_end: date = node.window[1]
        self.descriptors = {p.id: p for p in sledai.parts}
        self.acute_condition = acute.evidence if acute.value else ()
        met = [e for p in sledai.parts if p.value for e in p.evidence]
        self.evidence = (*self.acute_condition, *met)

    @property
    def latest_evidence(self) -> date | None:
        return max((e.date for e in self.evidence if e.date), default=None)


class MisleView:
    """A :class:`TrialResult` of MiSLE read as age, acr and activity."""

    def __init__(self, result: TrialResult):
        self.trial_result = result
        self.patient = result.patient
        self.name = result.name
        self.as_of = result.as_of
        self.candidate = result.candidate
        self.status = result.status
        self.eligible_from = result.eligible_from
        self.exclusions = result.exclusions
        self.notes = result.notes
        self.reasons = result.reasons
        self.doubted = result.doubted
        self.age = AgeView(result)
        self.acr = AcrView(result)
        self.activity = ActivityView(result) if result.candidate else None
