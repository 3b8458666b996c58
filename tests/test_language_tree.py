"""Combinators of the criteria language: Kleene truth tables, evidence, windows, ranking paths.

Each case is a one-inclusion trial ("probe") whose rule is built from three leaves with a
known answer for the patient below: T (a malar-rash Condition on record: met), F (a
discoid-rash Condition, none on record: not met) and U (anti-dsDNA positive, where the only
result is a bare number without a reference range: unknown).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from builders import SNOMED, D, condition, eligible_core, facts_of, observation, patient, quantity

from fhir_cohort.criteria.language import load, parse_trial
from fhir_cohort.criteria.rank_terms import rank
from fhir_cohort.criteria.tree import evaluate

VALUESETS = Path(__file__).resolve().parents[1] / "queries" / "valuesets"
T = {"condition": "acr-malar-rash"}
F = {"condition": "acr-discoid-rash"}
U = {"lab": "dsdna", "positive": True}
RECORD = [
    patient(),
    condition("c-sle", SNOMED, "55464009"),
    condition("c-malar", SNOMED, "95332009", onset="2026-05-01"),
    observation("o-dsdna", "5130-0", "2026-06-01", valueQuantity=quantity(45, "IU/mL")),
    observation("o-upcr", "2890-2", "2026-03-01", valueQuantity=quantity(1.2, "g/g")),
]


def probe(rule: dict, ranking: str = "[]", labels: dict | None = None):
    """Evaluate RECORD with a trial whose one inclusion is ``rule``."""
    text = f"""
trial: probe
title: Probe
version: "1"
labels: {json.dumps({"probe": "Probe", "pool": "pool", **(labels or {})})}
labs:
  dsdna: {{valueset: lab-anti-dsdna}}
  upcr: {{valueset: lab-urine-protein-creatinine-ratio, unit: g/g}}
candidate_pool: {{condition: sle-diagnosis}}
inclusions:
  probe: {{rule: {json.dumps(rule)}}}
ranking: {ranking}
"""
    trial = parse_trial(text, "probe.yaml", "probe", VALUESETS)
    return evaluate(facts_of(RECORD), trial, D), trial


def answer(rule: dict) -> str:
    return probe(rule)[0].inclusions["probe"].result


@pytest.mark.parametrize(
    ("parts", "all_", "any_"),
    [
        ([T, T], "met", "met"),
        ([T, F], "not-met", "met"),
        ([T, U], "unknown", "met"),
        ([F, U], "not-met", "unknown"),
        ([U, U], "unknown", "unknown"),
        ([F, F], "not-met", "not-met"),
    ],
)
def test_all_and_any_are_kleene(parts, all_, any_):
    assert answer({"all": parts}) == all_
    assert answer({"any": parts}) == any_


@pytest.mark.parametrize(("leaf", "expected"), [(T, "not-met"), (F, "met"), (U, "unknown")])
def test_not(leaf, expected):
    assert answer({"not": leaf}) == expected


@pytest.mark.parametrize(
    ("n", "otherwise", "expected"),
    [(1, "unknown", "met"), (2, "unknown", "unknown"), (2, "not-met", "not-met"),
     (3, "unknown", "not-met")],
)  # fmt: skip
def test_at_least_with_otherwise(n, otherwise, expected):
    labels = {"a": "A", "b": "B", "c": "C"}
    rule = {"at_least": n, "otherwise": otherwise, "of": {"a": T, "b": U, "c": F}}
    result, _ = probe(rule, labels=labels)
    node = result.inclusions["probe"]
    assert node.result == expected
    shown = node.to_dict()
    assert (shown["count"], shown["met"], shown["missing"]) == (1, ["a"], ["b", "c"])
    assert shown["criteria"]["b"]["result"] == "unknown"
    assert [e["resource"] for e in shown["evidence"]] == ["Condition/c-malar"]


@pytest.mark.parametrize(
    ("items", "expected", "score"),
    [
        ({"a": {"weight": 3, "rule": T}}, "met", 3),
        ({"a": {"weight": 2, "rule": T}, "b": {"weight": 2, "rule": U}}, "not-met", 2),
        ({"c": {"weight": 3, "rule": F}}, "unknown", 0),  # nothing assessed
    ],
)
def test_score(items, expected, score):
    result, _ = probe(
        {"score": {"at_least": 3, "items": items}}, labels={"a": "A", "b": "B", "c": "C"}
    )
    node = result.inclusions["probe"]
    assert (node.result, node.score) == (expected, score)
    descriptors = node.to_dict()["descriptors"]
    assert {k: d["weight"] for k, d in descriptors.items()} == {
        k: v["weight"] for k, v in items.items()
    }


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"if": T, "then": U}, "unknown"),
        ({"if": U, "then": T}, "met"),  # unsure whether it applies: it applies
        ({"if": F, "then": T}, "not-met"),  # else defaults to clear (not met)
        ({"if": F, "then": F, "else": "met"}, "met"),
        ({"if": F, "then": F, "else": "unknown"}, "unknown"),
    ],
)
def test_if_then_else(rule, expected):
    assert answer(rule) == expected


def test_window_applies_to_leaves_inside_unless_they_set_their_own():
    upcr = {"lab": "upcr", "above": 0.5}
    assert answer({"window_days": 90, "any": [upcr]}) == "not-met"  # 2026-03-01 is D - 121
    assert answer({"window_days": 90, "any": [{**upcr, "within_days": 150}]}) == "met"
    assert answer({"window_days": 30, "all": [T]}) == "not-met"  # the rash is D - 60
    result, _ = probe({"window_days": 60, "all": [T]})
    node = result.inclusions["probe"]
    assert node.result == "met"
    assert node.to_dict()["window"] == {"from": "2026-05-01", "to": "2026-06-30"}


def test_evidence_follows_the_answer():
    result, _ = probe({"any": [T, U]})
    assert [e.resource for e in result.inclusions["probe"].evidence] == ["Condition/c-malar"]
    result, _ = probe({"any": [F, U]})
    evidence = result.inclusions["probe"].evidence
    assert [(e.resource, e.note) for e in evidence] == [
        ("Observation/o-dsdna", "cannot tell whether positive")
    ]
    result, _ = probe({"not": T})
    assert [e.resource for e in result.inclusions["probe"].evidence] == ["Condition/c-malar"]


def test_named_parts_ranking_paths_and_to_dict():
    rule = {"any": [{"id": "rash", **T}, {"id": "dsdna", **U}]}
    ranking = """
  - {rule_met: probe.rash, points: 15}
  - {per_unknown: [probe.dsdna, probe], points: -10}
  - {recency: [probe.rash], within_days: {30: 10, 90: 5}}"""
    result, trial = probe(rule, ranking=ranking)
    assert result.node("probe.rash").result == "met"
    assert result.node("probe.dsdna").result == "unknown"
    assert set(result.to_dict()["criteria"]["probe"]["parts"]) == {"rash", "dsdna"}
    # +15 rash met, -10 one unknown (dsdna; probe itself is met), +5 evidence 60 days old
    assert [(r.rank, r.score) for r in rank([result], trial)] == [(1, 10)]
    assert (result.status, result.reasons) == ("eligible", ())
    result, _ = probe({"all": [T, U]})
    assert (result.status, result.reasons) == ("needs-review", ("Probe: unknown",))


def test_results_and_trials_pickle_and_show_as_json():
    misle = load("misle")
    result = evaluate(facts_of(eligible_core()), misle, D)
    again = pickle.loads(pickle.dumps(result))
    assert again == result
    assert evaluate(facts_of(eligible_core()), pickle.loads(pickle.dumps(misle)), D) == result
    shown = result.to_dict()
    assert list(shown) == [
        "patient", "name", "status", "eligible_from", "reasons", "age", "criteria", "exclusions",
        "notes",
    ]  # fmt: skip
    activity = shown["criteria"]["activity"]
    assert (activity["result"], activity["window"]) == (
        "met", {"from": "2026-04-01", "to": "2026-06-30"},
    )  # fmt: skip
    sledai = activity["parts"]["sledai"]
    assert (sledai["score"], sledai["descriptors"]["proteinuria"]["weight"]) == (6, 4)
    assert activity["parts"]["acute"]["result"] == "not-met"
    assert shown["criteria"]["acr"]["count"] == 5
