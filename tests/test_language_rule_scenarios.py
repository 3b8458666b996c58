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


# Scenarios where today's engine already applies issue 10's rule for values it cannot
# read (an unreadable birthDate or onset) and the language does not yet: the switch-over
# (issue 11, phase B) wires facts' ``unreadable`` markers into the language's leaves.
PENDING_UNREADABLE = {
    "test_age_and_partial_birth_dates[not a date-unknown-None-needs-review]",
    "test_unparseable_onset_falls_back_to_recorded_date",
}


@pytest.fixture(autouse=True)
def both_engines(monkeypatch, request):
    monkeypatch.setattr(rules, "run", _both)
    if request.node.name in PENDING_UNREADABLE:
        request.node.add_marker(
            pytest.mark.xfail(strict=True, reason="the language reads no unreadable markers yet")
        )


def test_scenarios_were_compared():
    """Runs last in this module: the replayed scenarios did go through both engines."""
    assert len(COMPARED) > 100
