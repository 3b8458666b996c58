"""The funnel follows the trial's inclusions in order, with the trial's labels."""

from __future__ import annotations

from datetime import date

from conftest import COHORT

from fhir_cohort.criteria.funnel import TrialFunnel
from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.plan import CODED, PoolGate
from fhir_cohort.criteria.tree import evaluate
from fhir_cohort.normalise.resources import patient_facts as extended_facts
from fhir_cohort.quality import DataQuality
from fhir_cohort.sources.files import FileSource
from fhir_cohort.store import SqliteStore


def test_misle_funnel_over_the_bundled_cohort(expected):
    trial = load("misle")
    gate = PoolGate(trial.spec, trial.valuesets)
    funnel = TrialFunnel(trial)
    with SqliteStore(None, filtered_types=CODED) as store:
        for raw in FileSource(COHORT).read(DataQuality().add, lambda _: None):
            store.add(raw, gate.classify(raw.resource))
        store.finish()
        for record in store.patients():
            if not gate.may_be_candidate(record.touches):
                funnel.count_outside_pool()
                continue
            facts = extended_facts(record.patient_id, record.resources(), store.medication)
            funnel.count(evaluate(facts, trial, date.fromisoformat(expected["as_of"])))
    shown = funnel.to_dict()
    steps = [(s["id"], s["label"], s["count"]) for s in shown["steps"]]
    assert [s[:2] for s in steps] == [
        ("pool", "lupus evidence"), ("age", "Age 18–65"),
        ("acr", "ACR 1997 criteria (4 or more of 11)"), ("activity", "Clinically active SLE"),
        ("no_exclusion", "no exclusion"), ("eligible", "eligible"), ("washout", "washout"),
    ]  # fmt: skip
    counts = [s[2] for s in steps]
    assert counts[:5] == sorted(counts[:5], reverse=True)  # each step keeps fewer
    wanted = [p["status"] for p in expected["patients"].values()]
    assert shown["patients_read"] == len(wanted) == 120
    assert shown["status"] == {s: wanted.count(s) for s in shown["status"]}
    assert counts[0] == 120 - wanted.count("not-a-candidate")
    assert counts[-2:] == [wanted.count("eligible"), wanted.count("washout")]
    assert sum(shown["exclusions"]["hiv"].values()) == counts[0]
