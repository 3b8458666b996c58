"""What a trial reads and whether its server searches are complete, in general terms."""

from __future__ import annotations

import pytest

from fhir_cohort.criteria.language import (
    AgeRule,
    AllRule,
    AnyRule,
    AtLeastRule,
    ConditionRule,
    NotRule,
    ScoreRule,
    load,
)
from fhir_cohort.criteria.plan import KEPT, PoolGate, codes, covered, resource_types

SURPASS2 = load("surpass2")
A, B, C = (ConditionRule(condition=name) for name in ("a", "b", "c"))


def score(weight_b: int) -> ScoreRule:
    items = {"a": {"weight": 2, "rule": A}, "b": {"weight": weight_b, "rule": B}}
    return ScoreRule(score={"at_least": 3, "items": items})


@pytest.mark.parametrize(
    ("rule", "searched", "expected"),
    [
        (A, {"a"}, True),
        (A, set(), False),
        (AnyRule(any=[A, B]), {"a"}, False),  # a patient with only b would be missed
        (AnyRule(any=[A, B]), {"a", "b"}, True),
        (AllRule(all=[A, B]), {"a"}, True),  # every match has an a
        (AtLeastRule(at_least=2, of={"a": A, "b": B, "c": C}), {"a"}, False),
        (AtLeastRule(at_least=2, of={"a": A, "b": B, "c": C}), {"a", "b"}, True),
        (score(2), {"a"}, True),  # b alone (2) cannot reach 3
        (score(3), {"a"}, False),
        (NotRule(**{"not": A}), {"a"}, False),
        (AgeRule(age={"min": 18}), {"a"}, False),
    ],
)
def test_covered(rule, searched, expected):
    assert covered(SURPASS2.spec, rule, searched) is expected


def test_what_surpass2_reads():
    assert resource_types(SURPASS2.spec) == (
        "Patient", "Condition", "FamilyMemberHistory", "Observation", "MedicationStatement",
        "MedicationRequest", "MedicationAdministration", "Medication",
    )  # fmt: skip
    read = codes(SURPASS2.spec, SURPASS2.valuesets)
    assert "http://hl7.org/fhir/sid/icd-10-cm|E11*" in read["Condition"]
    assert "http://snomed.info/sct|255032005" in read["FamilyMemberHistory"]
    assert "http://loinc.org|8302-2" in read["Observation"]
    assert "http://www.nlm.nih.gov/research/umls/rxnorm|6809" in read["MedicationRequest"]
    fetch = {s.resource: (s.valuesets, s.include) for s in SURPASS2.server.fetch}
    assert fetch["FamilyMemberHistory"] == ((), None)
    assert fetch["MedicationRequest"] == ((), "medication")


def test_pool_gate():
    gate = PoolGate(SURPASS2.spec, SURPASS2.valuesets)
    t2d = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E119"}]},
    }
    family = {
        "resourceType": "FamilyMemberHistory",
        "condition": [
            {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "255032005"}]}}
        ],
    }
    a1c = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
    }
    other = {"resourceType": "Observation",
             "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}}  # fmt: skip
    assert gate.classify(other) == 0
    assert gate.classify(family) == gate.classify(a1c) == KEPT
    assert gate.may_be_candidate(gate.classify(t2d) | KEPT)
    assert not gate.may_be_candidate(gate.classify(family) | gate.classify(a1c))


@pytest.mark.parametrize("name", ["misle", "surpass2"])
def test_the_pool_gate_answers_each_bit_pattern_as_its_rule_does_and_remembers_it(
    name, monkeypatch
):
    """Deciding asks the gate once per patient; its answer is a pure function of the
    patient's bits, so each pattern is walked through the rule tree once."""
    trial = load(name)
    gate = PoolGate(trial.spec, trial.valuesets)
    patterns = range(1 << min(gate.width, 10))
    walked = [gate._may(trial.spec.candidate_pool, touches) for touches in patterns]
    assert True in walked and False in walked  # the patterns tell patients apart
    assert [gate.may_be_candidate(touches) for touches in patterns] == walked

    def walk_again(rule, touches):
        raise AssertionError(f"pattern {touches} walked again")

    monkeypatch.setattr(gate, "_may", walk_again)
    assert [gate.may_be_candidate(touches) for touches in patterns] == walked
