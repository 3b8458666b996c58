"""MiSLE in the criteria language decides every bundled patient as today's engine does.

Each patient of fixtures/misle-cohort is normalised once with today's
``normalise.resources.patient_facts`` and evaluated by both engines: today's
(``queries/misle.yaml``) and the language's (``queries/next/misle.yaml``). Status,
eligible_from, age, every criterion with its evidence, activity, every exclusion, the
notes, the rank order and the ranking scores must all be the same. So must what the
trials read: the pool gate's decision per patient and the server's fetch plan.
"""

from __future__ import annotations

from datetime import date

import pytest
from conftest import COHORT
from language_compare import differences

from fhir_cohort.criteria.evaluator import evaluate as evaluate_today
from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.plan import PoolGate, resource_types
from fhir_cohort.criteria.rank_terms import rank as rank_next
from fhir_cohort.criteria.relevance import CODED, Relevance
from fhir_cohort.criteria.tree import evaluate as evaluate_next
from fhir_cohort.normalise.extra import extended_facts
from fhir_cohort.normalise.resources import patient_facts
from fhir_cohort.quality import DataQuality
from fhir_cohort.rank import rank as rank_today
from fhir_cohort.sources.files import FileSource
from fhir_cohort.store import SqliteStore

AS_OF = date(2026, 6, 30)


@pytest.fixture(scope="module")
def next_trial():
    return load("misle")


@pytest.fixture(scope="module")
def cohort(trial, next_trial) -> list[tuple]:
    """(patient id, facts, today's gate bits, the language's gate bits, extended facts)."""
    today, gate = Relevance(trial), PoolGate(next_trial.spec, next_trial.valuesets)
    quality = DataQuality()
    patients = []
    with SqliteStore(None, filtered_types=CODED) as store:
        for raw in FileSource(COHORT).read(quality.add, lambda _: None):
            store.add(raw, today.classify(raw.resource) | gate.classify(raw.resource))
        store.finish()
        for record in store.patients():
            resources = record.resources()
            facts = patient_facts(record.patient_id, resources, store.medication)
            bits_today = bits_next = 0
            for resource in resources:
                bits_today |= today.classify(resource)
                bits_next |= gate.classify(resource)
            extended = extended_facts(record.patient_id, resources, store.medication)
            patients.append((record.patient_id, facts, bits_today, bits_next, extended))
    return patients


def test_every_patient_gets_the_same_answer(trial, next_trial, cohort):
    assert len(cohort) == 120
    different = {}
    for patient_id, facts, *_ in cohort:
        found = differences(
            evaluate_today(facts, trial, AS_OF), evaluate_next(facts, next_trial, AS_OF)
        )
        if found:
            different[patient_id] = found
    assert different == {}


def test_extended_facts_change_nothing_for_misle(next_trial, cohort):
    """The facts phase B merges into the normaliser give MiSLE the very same answers."""
    for _, facts, _, _, extended in cohort:
        assert evaluate_next(extended, next_trial, AS_OF) == evaluate_next(facts, next_trial, AS_OF)


@pytest.mark.parametrize("as_of", [AS_OF, date(2026, 7, 22), date(2025, 1, 1)])
def test_same_rank_order_and_scores(trial, next_trial, cohort, as_of):
    today = [evaluate_today(facts, trial, as_of) for _, facts, *_ in cohort]
    listed = [evaluate_next(facts, next_trial, as_of) for _, facts, *_ in cohort]
    ranked_today = [(c.rank, c.score, c.result.patient) for c in rank_today(today, trial.ranking)]
    ranked_next = [(c.rank, c.score, c.result.patient) for c in rank_next(listed, next_trial)]
    assert len(ranked_today) > 50
    assert ranked_next == ranked_today


def test_pool_gate_lets_through_the_same_patients(trial, next_trial, cohort):
    today, gate = Relevance(trial), PoolGate(next_trial.spec, next_trial.valuesets)
    decisions = [(today.may_be_candidate(a), gate.may_be_candidate(b)) for _, _, a, b, _ in cohort]
    assert [a for a, _ in decisions] == [b for _, b in decisions]
    assert 0 < sum(a for a, _ in decisions) < len(decisions)


def test_derived_server_plan_equals_the_hand_written_one(trial, next_trial):
    def shape(plan):
        return [
            (s.resource, sorted(v.id for v in s.valuesets), s.include)
            for s in (*plan.candidate_searches, *plan.fetch)
        ]

    assert shape(next_trial.server) == shape(trial.server)
    assert next_trial.server.patients_per_request == trial.server.patients_per_request
    assert resource_types(next_trial.spec) == (
        "Patient", "Condition", "Observation", "Procedure", "MedicationStatement",
        "MedicationRequest", "MedicationAdministration", "Medication",
    )  # fmt: skip
