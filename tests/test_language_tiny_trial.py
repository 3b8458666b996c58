"""A new trial is a new file: TINY (tests/trials/tiny.yaml and its value sets) is screened
by the same code as MiSLE and SURPASS-2, with nothing written for it but the file."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from builders import (  # noqa: F401 (run: today's engine, not used)
    RXNORM,
    SNOMED,
    D,
    concept,
    condition,
    med_administration,
    observation,
    patient,
    quantity,
    run,
)

from fhir_cohort.cli import main
from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.rank_terms import rank
from fhir_cohort.criteria.tree import evaluate
from fhir_cohort.normalise.resources import patient_facts

TINY = Path(__file__).resolve().parent / "trials" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny():
    return load(str(TINY))


def screen(tiny, *resources, birth="1990-01-15", as_of=D):
    facts = patient_facts("p1", [patient(birth=birth), *resources], lambda _: None)
    return evaluate(facts, tiny, as_of)


ASTHMA = condition("c-asthma", SNOMED, "195967001")


def eos(value, unit="10*3/uL", when="2026-01-10"):
    return observation("o-eos", "711-2", when, valueQuantity=quantity(value, unit))


def test_statuses(tiny):
    assert screen(tiny, eos(0.45)).status == "not-a-candidate"
    eligible = screen(tiny, ASTHMA, eos(450, "/uL"))
    assert (eligible.status, eligible.reasons) == ("eligible", ())
    assert [e.resource for e in eligible.inclusions["eosinophils"].evidence] == [
        "Observation/o-eos"
    ]
    low = screen(tiny, ASTHMA, eos(0.2))
    assert (low.status, low.reasons) == (
        "needs-review",
        ("Blood eosinophils 0.3 ×10⁹/L or more (latest in a year): not-met",),
    )
    assert screen(tiny, ASTHMA, eos(0.45), birth="2016-01-01").status == "excluded"


def test_washout(tiny):
    xolair = med_administration(
        "ma", when="2026-05-20", medicationCodeableConcept={"text": "XOLAIR 150 mg injection"}
    )
    result = screen(tiny, ASTHMA, eos(0.45), xolair)
    assert (result.status, result.eligible_from) == ("washout", date(2026, 9, 20))
    coded = med_administration(
        "ma", when="2026-01-20", medicationCodeableConcept=concept(RXNORM, "302379")
    )
    assert screen(tiny, ASTHMA, eos(0.45), coded).status == "eligible"  # until 2026-05-20


def test_ranking_and_output(tiny):
    results = [screen(tiny, ASTHMA, eos(0.45)), screen(tiny, ASTHMA, birth="1990")]
    ranked = rank(results, tiny)
    assert [(r.rank, r.score, r.result.status) for r in ranked] == [
        (1, 0, "eligible"),
        (2, 0, "needs-review"),  # born in 1990: 35 or 36, in range; no eosinophils: not met
    ]
    shown = results[0].to_dict()
    assert list(shown["criteria"]) == ["age", "eosinophils"]
    assert list(shown["exclusions"]) == ["omalizumab_washout"]


def test_check_trial(capsys):
    assert main(["check-trial", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert "TINY: an asthma biologic trial (test only) (tiny, version 1)" in out
    assert "  tiny-asthma: 1; 0" in out
    assert "find candidates: Condition in tiny-asthma" in out
