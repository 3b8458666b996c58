"""Every scenario of test_evaluator_rules.py, run through both engines.

The rule tests call ``run`` (tests/builders.py) to normalise and evaluate a patient;
here ``run`` evaluates the same facts with today's engine and with the criteria
language (``queries/next/misle.yaml``), asserts that the two answers are the same
(tests/language_compare.py), and hands today's answer back to the test, whose own
assertions then run unchanged.
"""

from __future__ import annotations

import builders
import pytest
import test_evaluator_rules as rules
from language_compare import differences
from test_evaluator_rules import *  # noqa: F403 (every scenario collected again here)

from fhir_cohort.criteria.evaluator import evaluate as evaluate_today
from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.tree import evaluate as evaluate_next

NEXT = load("misle")
COMPARED: list[str] = []


def _both(trial, resources, as_of=builders.D, pid=builders.PID, medications=None):
    facts = builders.facts_of(resources, pid, medications)
    old = evaluate_today(facts, trial, as_of)
    assert differences(old, evaluate_next(facts, NEXT, as_of)) == []
    COMPARED.append(pid)
    return old


@pytest.fixture(autouse=True)
def both_engines(monkeypatch):
    monkeypatch.setattr(rules, "run", _both)


def test_scenarios_were_compared():
    """Runs last in this module: the replayed scenarios did go through both engines."""
    assert len(COMPARED) > 100
