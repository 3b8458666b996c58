"""Leaves of the criteria language, read the way the second trial file sets their options.

Small unit tests of each leaf's reading (not SURPASS-2 outcomes: those are the fixture's):
declared units and conversions, the declared positive/negative reading with bands, the
latest occasion with same-day agreement, values computed from two labs the same day,
continuous exposure with gaps and expected supply, family history, and washouts read from
exposure intervals. Patients are normalised with ``normalise.resources.patient_facts``.
"""

from __future__ import annotations

from datetime import date

import pytest
from builders import (
    INTERP,
    RXNORM,
    SNOMED,
    D,
    concept,
    med_request,
    med_statement,
    observation,
    patient,
    quantity,
)

from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.leaves import Patient
from fhir_cohort.normalise.resources import patient_facts as extended_facts

TRIAL = load("surpass2")
SPEC = TRIAL.spec


def reader(*resources, as_of: date = D, **who) -> Patient:
    facts = extended_facts("p1", [patient(**who), *resources], lambda _: None)
    return Patient(facts, TRIAL, as_of)


def hba1c(rid, value, unit, when="2026-06-10", **extra):
    q = quantity(value, unit) | extra.pop("q", {})
    return observation(rid, "4548-4", when, valueQuantity={**q, "code": unit}, **extra)


def rule(key: str):
    return SPEC.inclusions[key].rule


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (7.0, "%", True),
        (10.5, "%", True),
        (10.6, "%", False),
        (53, "mmol/mol", True),  # 53 × 0.09148 + 2.152 = 7.0004
        (52, "mmol/mol", False),  # 6.909
        (7.4, "mg/dL", None),  # not a unit this lab is read in
    ],
)
def test_declared_units_convert_or_refuse(value, unit, expected):
    found = reader(hba1c("o", value, unit)).lab_found(rule("hba1c"), None)
    assert found.value() is expected
    assert [m.evidence.resource for m in found.matches] == ["Observation/o"]


def test_unreadable_unit_is_noted_and_value_string_is_read():
    patient_ = reader(hba1c("o", 7.4, "mg/dL"))
    patient_.lab_found(rule("hba1c"), None)
    assert [(n.code, n.where) for n in patient_.notes.values()] == [
        ("unit-mismatch", "Observation/o")
    ]
    text = observation("s", "4548-4", "2026-06-10", valueString="7.4 %")
    assert reader(text).lab_found(rule("hba1c"), None).value() is True
    above = observation("s", "4548-4", "2026-06-10", valueString=">14 %")
    assert reader(above).lab_found(rule("hba1c"), None).value() is False
    straddles = observation("s", "4548-4", "2026-06-10", valueString=">10 %")
    assert reader(straddles).lab_found(rule("hba1c"), None).value() is None


# --------------------------------------------------------------------------- latest occasion


def test_latest_occasion_same_day_must_agree():
    early = hba1c("a", 12, "%", "2026-05-01")
    good, bad, odd = hba1c("b", 7.5, "%"), hba1c("c", 11, "%"), hba1c("d", 8, "bananas")
    assert reader(early, good).lab_found(rule("hba1c"), None).value() is True  # latest decides
    assert reader(good, bad).lab_found(rule("hba1c"), None).value() is None  # disagree
    assert reader(good, odd).lab_found(rule("hba1c"), None).value() is True  # unreadable dropped
    assert reader(odd).lab_found(rule("hba1c"), None).value() is None
    found = reader(bad).lab_found(rule("hba1c"), None)
    assert found.value() is False
    assert [e.resource for e in found.evidence()] == ["Observation/c"]  # the no has evidence


def test_no_result_in_the_window_is_unknown_when_the_rule_says_so():
    old = hba1c("a", 7.5, "%", "2026-03-31")  # D - 91
    found = reader(old).lab_found(rule("hba1c"), None)
    assert found.value() is None
    assert found.evidence()[0].note == "no hba1c result"


# --------------------------------------------------------------------------- declared reading


HCG = SPEC.exclusions["pregnancy"].rules[2].rule.then


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueCodeableConcept": concept(SNOMED, "260373001")}, True),  # Detected
        ({"valueCodeableConcept": concept(SNOMED, "131194007")}, False),  # Non-reactive
        ({"valueString": " Positive "}, True),
        ({"valueString": "not detected"}, False),
        ({"valueString": "weakly positive"}, None),  # words are exact, not searched
        ({"valueQuantity": quantity(30, "mIU/mL")}, True),
        ({"valueQuantity": quantity(10, "mIU/mL")}, None),  # 5 to < 25: indeterminate
        ({"valueQuantity": quantity(4, "IU/L")}, False),
        ({"valueQuantity": quantity(10, "mIU/mL", "<")}, None),  # negative or indeterminate
        ({"valueQuantity": quantity(4, "mIU/mL"), "interpretation": [concept(INTERP, "POS")]},
         False),  # flags count only without a value
        ({"interpretation": [concept(INTERP, "DET")]}, True),
        ({"interpretation": [concept(INTERP, "N")]}, False),
    ],
)  # fmt: skip
def test_declared_positive_reading(value, expected):
    result = observation("h", "2106-3", "2026-06-20", **value)
    assert reader(result, gender="female").lab_found(HCG, None).value() is expected


# --------------------------------------------------------------------------- measures


def _vital(rid, loinc, value, unit, when="2026-05-01", comparator=None):
    return observation(rid, loinc, when, valueQuantity={**quantity(value, unit, comparator),
                                                         "code": unit})  # fmt: skip


@pytest.mark.parametrize(
    ("resources", "expected", "shown"),
    [
        ([_vital("w", "29463-7", 80, "kg"), _vital("h", "8302-2", 180, "cm")], False, "24.7"),
        ([_vital("w", "29463-7", 81, "kg"), _vital("h", "8302-2", 1.8, "m")], True, "25"),
        ([_vital("w", "29463-7", 178.6, "[lb_av]"), _vital("h", "8302-2", 70.9, "[in_i]")],
         True, "25"),  # 81.01 kg / 1.80 m
        ([_vital("w", "29463-7", 80, "kg", comparator=">"), _vital("h", "8302-2", 1.8, "m")],
         None, "unreadable"),
        # a direct BMI that day is read instead of the pair
        ([_vital("w", "29463-7", 95, "kg"), _vital("h", "8302-2", 1.8, "m"),
          _vital("b", "39156-5", 24.0, "kg/m2")], False, "24"),
    ],
)  # fmt: skip
def test_bmi_from_weight_and_height_the_same_day(resources, expected, shown):
    found = reader(*resources).measure_found(rule("bmi"), None)
    assert found.value() is expected
    assert found.matches[0].evidence.note == f"bmi {shown}" + (" kg/m2" if shown[0] != "u" else "")


def test_bmi_pair_on_different_days_is_no_occasion():
    pair = [
        _vital("w", "29463-7", 95, "kg", "2026-05-01"),
        _vital("h", "8302-2", 1.7, "m", "2026-05-02"),
    ]
    found = reader(*pair).measure_found(rule("bmi"), None)
    assert found.value() is None
    assert found.evidence()[0].note == "no bmi result"


# --------------------------------------------------------------------------- exposure


def metformin(rid, start, end=None, status="completed"):
    period = {"start": start, **({"end": end} if end else {})}
    return med_statement(rid, status, effectivePeriod=period,
                         medicationCodeableConcept=concept(RXNORM, "6809"))  # fmt: skip


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], None),
        ([metformin("a", "2025-01-01", status="active")], True),
        ([metformin("a", "2026-03-01", "2026-03-25"), metformin("b", "2026-04-02", "2026-06-25")],
         True),  # 7 uncovered days are bridged (b alone starts after D - 90)
        ([metformin("a", "2026-03-01", "2026-03-25"), metformin("b", "2026-04-03", "2026-06-25")],
         False),  # 8 are not
        ([metformin("a", "2026-01-01", "2026-06-22")], False),  # ended before D - 7
        ([metformin("a", "2026-04-02", status="active")], False),  # started after D - 90
    ],
)  # fmt: skip
def test_continuous_exposure(records, expected):
    assert reader(*records).exposure_found(rule("metformin")).value() is expected


def test_expected_supply_duration_makes_a_finished_order_last():
    order = med_request(
        "r", "completed", authored="2026-03-01",
        medicationCodeableConcept={"text": "Glucophage 500 mg tablet"},
        dispenseRequest={"expectedSupplyDuration": {"value": 30, "unit": "days", "code": "d"},
                         "numberOfRepeatsAllowed": 3},
    )  # fmt: skip
    found = reader(order).exposure_found(rule("metformin"))
    assert found.value() is True  # 2026-03-01 … 2026-06-28 (120 days)
    assert found.matches[0].evidence.note == "continuous 2026-03-01 – 2026-06-28"


# --------------------------------------------------------------------------- family, washouts


def fmh(rid, code, status="completed", when=None):
    out = {"resourceType": "FamilyMemberHistory", "id": rid, "status": status,
           "patient": {"reference": "Patient/p1"},
           "relationship": concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH"),
           "condition": [{"code": concept(SNOMED, code)}]}  # fmt: skip
    if when:
        out["date"] = when
    return out


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (fmh("f", "255032005"), True),
        (fmh("f", "255032005", "entered-in-error"), False),
        (fmh("f", "255032005", when="2026-07-01"), False),  # dated after D: ignored
        (fmh("f", "363478007"), False),  # unspecified thyroid malignancy: the review rule's
    ],
)
def test_family_history(record, expected):
    rule_ = SPEC.exclusions["mtc_men2"].rules[0].rule.any[1]
    found = reader(record).coded_found(rule_, None)
    assert found.value() is expected
    if expected:
        assert found.evidence()[0].value == "relative mth"


@pytest.mark.parametrize(
    ("record", "result", "until"),
    [
        (med_statement("g", "active", effectivePeriod={"start": "2025-01-01"},
                       medicationCodeableConcept={"text": "Ozempic 1 mg pen"}),
         "washout", date(2026, 9, 30)),  # ongoing: last day D
        (med_statement("g", "completed", effectivePeriod={"start": "2026-01-01",
                                                          "end": "2026-04-01"},
                       medicationCodeableConcept=concept(RXNORM, "2601723")),
         "washout", date(2026, 7, 1)),
        (med_statement("g", "completed", effectivePeriod={"start": "2026-01-01",
                                                          "end": "2026-03-30"},
                       medicationCodeableConcept=concept(RXNORM, "2601723")),
         "clear", None),
    ],
)  # fmt: skip
def test_washout_from_exposure_intervals(record, result, until):
    finding = reader(record).washout(SPEC.exclusions["glp1_washout"])
    assert (finding.result, finding.until) == (result, until)
    assert [e.resource for e in finding.evidence] == ["MedicationStatement/g"]
