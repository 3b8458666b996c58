"""Rule-by-rule tests of the evaluator, each citing the rules page (misle-rules.md, "R<line>")
or the codebook (clinical-codebook.md, "§x.y").

Each test builds one patient's FHIR record with ``builders`` and runs the pure per-patient
step: ``patient_facts`` then ``evaluate``. The as-of date is D = 2026-06-30 unless stated.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import date, timedelta

import pytest
from builders import (
    CPT,
    ICD10,
    LOINC,
    RXNORM,
    SNOMED,
    D,
    concept,
    condition,
    drug,
    eligible_core,
    facts_of,
    interpretation,
    med_administration,
    med_request,
    med_statement,
    observation,
    patient,
    procedure,
    quantity,
    resources_of,
    run,
    sle,
)

from fhir_cohort.criteria.tree import evaluate


def days_before(n: int, as_of: date = D) -> str:
    return (as_of - timedelta(days=n)).isoformat()


def base() -> list[dict]:
    """A patient aged 36 with an SLE code and nothing else."""
    return [patient(), sle()]


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("days", "expected"),
    [(0, "met"), (90, "met"), (91, "unknown")],
)
def test_activity_window_is_90_days_inclusive(trial, days, expected):
    """R15 + R28: "within 90 days up to D" means D-90 through D, both ends included.

    A UPCR of 1.2 g/g (proteinuria, weight 4) on D-90 still scores; on D-91 there is no
    activity lab in the window at all, so activity is unknown (not not-met).
    """
    upcr = observation("o-upcr", "2890-2", days_before(days), valueQuantity=quantity(1.2, "g/g"))
    result = run(trial, [*base(), upcr])
    assert result.activity.result == expected
    assert result.activity.window_start == date(2026, 4, 1)
    assert result.activity.window_end == D
    if expected == "met":
        assert result.activity.score == 4
        assert resources_of(result.activity.evidence) == ["Observation/o-upcr"]
    else:
        assert result.activity.score == 0
        assert result.activity.evidence == ()


def test_activity_labs_in_window_below_score_4_is_not_met(trial):
    """R28: activity labs in the window but a score below 4 -> not met (not unknown)."""
    c3 = observation("o-c3", "4485-9", days_before(5), valueQuantity=quantity(60, "mg/dL"))
    result = run(trial, [*base(), c3])
    assert result.activity.result == "not-met"
    assert result.activity.score == 2
    assert result.activity.descriptors["low_complement"].result == "met"


def test_acute_sle_condition_in_window_meets_activity_alone(trial):
    """R28: an acute SLE Condition (403486000) dated in the window is activity met by itself."""
    acute = condition("c-acute", SNOMED, "403486000", onset=days_before(90))
    old = condition("c-acute-old", SNOMED, "403487009", onset=days_before(91))
    result = run(trial, [*base(), acute, old])
    assert result.activity.result == "met"
    assert result.activity.score == 0
    assert resources_of(result.activity.acute_condition) == ["Condition/c-acute"]


@pytest.mark.parametrize(
    ("days", "expected"),
    [(0, "excluded"), (90, "excluded"), (91, "clear"), (-1, "clear")],
)
def test_dialysis_procedure_window_is_90_days_inclusive(trial, days, expected):
    """R32 + R15: a dialysis Procedure dated D-90..D excludes; D-91 or after D does not."""
    dialysis = procedure("pr-hd", CPT, "90935", days_before(days))
    result = run(trial, [*base(), dialysis])
    finding = result.exclusions["dialysis"]
    assert finding.result == expected
    if expected == "excluded":
        assert resources_of(finding.evidence) == ["Procedure/pr-hd"]
        assert result.status == "excluded"
    else:
        assert finding.evidence == ()


def test_dialysis_procedure_not_completed_does_not_count(trial):
    """R8: a Procedure counts only when completed or in-progress."""
    planned = procedure("pr-hd", CPT, "90935", days_before(3), status="not-done")
    going = procedure("pr-pd", SNOMED, "71192002", days_before(3), status="in-progress")
    assert run(trial, [*base(), planned]).exclusions["dialysis"].result == "clear"
    finding = run(trial, [*base(), planned, going]).exclusions["dialysis"]
    assert finding.result == "excluded"
    assert resources_of(finding.evidence) == ["Procedure/pr-pd"]


@pytest.mark.parametrize(
    ("clinical", "onset", "expected"),
    [
        ("active", "2005-01-01", "excluded"),  # any onset date
        (None, "2024-02-01", "excluded"),  # missing clinicalStatus on a dated Condition
        (None, None, "clear"),  # undated and no status: not a current state
        ("resolved", "2024-02-01", "clear"),
        ("relapse", None, "excluded"),  # undated but active/recurrence/relapse
    ],
)
def test_dialysis_dependence_condition_must_be_current(trial, clinical, onset, expected):
    """R6 + R32: dialysis dependence is a *current* state (clinicalStatus rules of R6)."""
    z992 = condition("c-z992", ICD10, "Z99.2", onset=onset, clinical=clinical)
    finding = run(trial, [*base(), z992]).exclusions["dialysis"]
    assert finding.result == expected
    if expected == "excluded":
        assert resources_of(finding.evidence) == ["Condition/c-z992"]


# --------------------------------------------------------------------------- as-of


def test_evidence_after_as_of_is_ignored(trial):
    """R3: evidence dated after D is ignored as if it did not exist yet.

    A positive HIV Ag/Ab, an HIV Condition, a dialysis Procedure and a belimumab
    administration, each dated D+1, change nothing.
    """
    later = (D + timedelta(days=1)).isoformat()
    resources = [
        *eligible_core(),
        observation("o-hiv", "56888-1", later, valueString="Reactive"),
        condition("c-b20", ICD10, "B20", onset=later),
        procedure("pr-hd", CPT, "90935", later),
        med_administration("ma-bel", when=later),
    ]
    result = run(trial, resources)
    assert result.status == "eligible"
    for key in ("hiv", "dialysis", "belimumab_washout"):
        assert result.exclusions[key].result == "clear", key
        assert result.exclusions[key].evidence == ()
    # The same record one day later sees all of it.
    later_result = run(trial, resources, as_of=D + timedelta(days=1))
    assert later_result.status == "excluded"
    assert set(resources_of(later_result.exclusions["hiv"].evidence)) == {
        "Observation/o-hiv",
        "Condition/c-b20",
    }
    assert later_result.exclusions["belimumab_washout"].result == "washout"


def test_sle_condition_onset_after_as_of_does_not_make_a_candidate(trial):
    """R3 + R41: an SLE Condition with onset after D is not yet evidence -> not-a-candidate."""
    future = sle(onset=(D + timedelta(days=1)).isoformat(), recordedDate="2026-01-01")
    result = run(trial, [patient(), future])
    assert result.candidate is False
    assert result.status == "not-a-candidate"
    assert run(trial, [patient(), future], as_of=D + timedelta(days=1)).candidate is True


def test_acr_lab_after_as_of_does_not_count(trial):
    """R19: an ACR criterion needs evidence dated on or before D."""
    platelets = observation(
        "o-plt", "777-3", (D + timedelta(days=1)).isoformat(), valueQuantity=quantity(60, "10*9/L")
    )
    result = run(trial, [*base(), platelets])
    assert result.acr.criteria["hematologic"].result == "not-met"


# --------------------------------------------------------------------------- occasions


def test_two_results_on_the_same_calendar_day_are_one_occasion(trial):
    """R14 + R22: leukocytes < 4.0 on >= 2 *distinct dates*; two results on one day
    (different times, even written with different offsets) are one occasion."""
    morning = observation(
        "o-wbc1", "6690-2", "2025-03-04T08:00:00Z", valueQuantity=quantity(3.2, "10*3/uL")
    )
    evening = observation(
        "o-wbc2", "26464-8", "2025-03-04T22:30:00-05:00", valueQuantity=quantity(3100, "/uL")
    )
    result = run(trial, [*base(), morning, evening])
    assert result.acr.criteria["hematologic"].result == "not-met"
    assert result.acr.criteria["hematologic"].evidence == ()

    next_day = observation("o-wbc3", "6690-2", "2025-03-05", valueQuantity=quantity(3.5, "K/uL"))
    result = run(trial, [*base(), morning, evening, next_day])
    finding = result.acr.criteria["hematologic"]
    assert finding.result == "met"
    assert set(resources_of(finding.evidence)) == {
        "Observation/o-wbc1",
        "Observation/o-wbc2",
        "Observation/o-wbc3",
    }


def test_proteinuria_needs_two_distinct_dates_across_measures(trial):
    """R21: proteinuria > 0.5 g/24 h (or UPCR > 0.5, or dipstick >= 3+) on >= 2 distinct dates,
    any mix of measures; two measures on the same day are still one occasion."""
    p24 = observation("o-p24", "2889-4", "2025-01-10", valueQuantity=quantity(800, "mg/(24.h)"))
    upcr_same_day = observation(
        "o-upcr", "2890-2", "2025-01-10", valueQuantity=quantity(0.9, "g/g")
    )
    dip = observation("o-dip", "20454-5", "2025-02-11", valueString="3+")
    assert run(trial, [*base(), p24, upcr_same_day]).acr.criteria["renal"].result == "not-met"
    finding = run(trial, [*base(), p24, upcr_same_day, dip]).acr.criteria["renal"]
    assert finding.result == "met"
    assert "Observation/o-dip" in resources_of(finding.evidence)


def test_undated_observation_counts_for_single_occasion_lifetime_criterion_only(trial):
    """R7: an undated Observation counts only for lifetime criteria needing one occasion.

    Undated platelets 60 -> hematologic met (platelets < 100 once). Two undated leukocyte
    counts never make two occasions. An undated anti-dsDNA positive meets immunologic but
    is not in the activity window.
    """
    plt = observation("o-plt", "777-3", None, valueQuantity=quantity(60, "10*9/L"))
    result = run(trial, [*base(), plt])
    assert result.acr.criteria["hematologic"].result == "met"
    assert resources_of(result.acr.criteria["hematologic"].evidence) == ["Observation/o-plt"]
    assert result.acr.criteria["hematologic"].evidence[0].date is None

    wbc = [
        observation(f"o-wbc{i}", "6690-2", None, valueQuantity=quantity(2.5, "10*9/L"))
        for i in (1, 2)
    ]
    result = run(trial, [*base(), *wbc])
    assert result.acr.criteria["hematologic"].result == "not-met"
    # ... nor do they count for the activity window (leukopenia < 3.0 would score 1).
    assert result.activity.result == "unknown"
    assert result.activity.descriptors["leukopenia"].result == "not-met"

    dsdna = observation("o-dsdna", "81716-3", None, valueString="Positive")
    result = run(trial, [*base(), dsdna])
    assert result.acr.criteria["immunologic"].result == "met"
    assert result.activity.result == "unknown"
    assert result.activity.descriptors["anti_dsdna"].result == "not-met"


def test_observation_date_fallbacks(trial):
    """R7: date = effectiveDateTime, else effectivePeriod.start, else effectiveInstant, else
    issued. An Observation dated only by ``issued`` inside the window counts for activity."""
    upcr = observation(
        "o-upcr", "2890-2", None, issued="2026-06-20T10:00:00Z", valueQuantity=quantity(1, "g/g")
    )
    result = run(trial, [*base(), upcr])
    assert result.activity.result == "met"
    assert result.activity.evidence[0].date == date(2026, 6, 20)


@pytest.mark.parametrize("status", ["preliminary", "amended", "corrected"])
def test_observation_counting_statuses(trial, status):
    """R7: final, amended, corrected or preliminary count."""
    plt = observation(
        "o-plt", "777-3", "2025-01-01", status=status, valueQuantity=quantity(50, "K/uL")
    )
    assert run(trial, [*base(), plt]).acr.criteria["hematologic"].result == "met"


@pytest.mark.parametrize(
    "extra",
    [
        {"status": "cancelled"},
        {"status": "entered-in-error"},
        {"status": "registered"},
        {
            "dataAbsentReason": concept(
                "http://terminology.hl7.org/CodeSystem/data-absent-reason", "error"
            )
        },
    ],
)
def test_observation_not_counting(trial, extra):
    """R7 + §7.5: other statuses, or a dataAbsentReason, do not count."""
    plt = observation("o-plt", "777-3", "2025-01-01", valueQuantity=quantity(50, "K/uL"), **extra)
    assert run(trial, [*base(), plt]).acr.criteria["hematologic"].result == "not-met"


# --------------------------------------------------------------------------- titers (ANA)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 160}}}, "met"),
        ({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 40}}}, "not-met"),
        ({"valueQuantity": {"value": 1280, "comparator": ">", "unit": "{titer}"}}, "met"),
        ({"valueQuantity": {"value": 80, "unit": "{titer}"}}, "met"),
        # ">1:40" may be 1:80 or may be 1:40-something: cannot tell
        ({"valueQuantity": {"value": 40, "comparator": ">", "unit": "{titer}"}}, "unknown"),
        ({"valueString": "<1:40"}, "not-met"),
        ({"valueString": "1:2560 speckled"}, "met"),
        ({"valueString": "Positive"}, "met"),  # qualitative positive with no titer
        ({"valueString": "Positive at 1:40"}, "not-met"),  # a titer is given: it decides
        ({"valueString": "Negative"}, "not-met"),
    ],
)
def test_ana_titer_parsing_paths(trial, value, expected):
    """R24 + §7.6: ANA >= 1:80 via valueRatio, valueQuantity {titer} with comparator, or
    valueString; a qualitative positive counts only when no titer is given."""
    ana = observation("o-ana", "5048-4", "2024-05-05", **value)
    finding = run(trial, [*base(), ana]).acr.criteria["ana"]
    assert finding.result == expected
    if expected == "not-met":
        assert finding.evidence == ()
    else:
        assert resources_of(finding.evidence) == ["Observation/o-ana"]
        assert finding.evidence[0].date == date(2024, 5, 5)
    if expected == "unknown":
        assert finding.evidence[0].note == "cannot tell whether titer at least 80"


def test_ana_value_ratio_evidence_shows_the_titer(trial):
    """§7.6: a valueRatio 1/160 is reported as the titer 1:160."""
    ana = observation(
        "o-ana",
        "5048-4",
        "2024-05-05",
        valueRatio={"numerator": {"value": 1}, "denominator": {"value": 160}},
    )
    evidence = run(trial, [*base(), ana]).acr.criteria["ana"].evidence[0]
    assert evidence.value == "1:160"
    assert evidence.code == f"{LOINC}|5048-4"


# --------------------------------------------------------------------------- "positive"


def test_positive_value_above_reference_high(trial):
    """R25: a value above referenceRange.high is positive; at or below it is not."""
    high = observation(
        "o-dsdna",
        "5130-0",
        "2024-01-01",
        valueQuantity=quantity(45, "IU/mL"),
        referenceRange=[{"high": quantity(30, "IU/mL")}],
    )
    finding = run(trial, [*base(), high]).acr.criteria["immunologic"]
    assert finding.result == "met"
    assert resources_of(finding.evidence) == ["Observation/o-dsdna"]
    assert finding.evidence[0].value == "45 IU/mL (reference –30 IU/mL)"

    at_limit = copy.deepcopy(high)
    at_limit["valueQuantity"]["value"] = 30
    assert run(trial, [*base(), at_limit]).acr.criteria["immunologic"].result == "not-met"


def test_positive_interpretation_pos_without_value(trial):
    """R7 + R25: a result sent only as an interpretation POS is positive."""
    only_flag = observation("o-sm", "5355-3", "2024-01-01", interpretation=interpretation("POS"))
    finding = run(trial, [*base(), only_flag]).acr.criteria["immunologic"]
    assert finding.result == "met"
    assert resources_of(finding.evidence) == ["Observation/o-sm"]


def test_bare_number_without_range_is_unknown_with_a_note(trial):
    """R25: a bare number with no reference range is *unknown*, not positive; the
    criterion is unknown and its evidence names the result with a note saying so."""
    bare = observation("o-dsdna", "5130-0", "2024-01-01", valueQuantity=quantity(45, "IU/mL"))
    result = run(trial, [*base(), bare])
    finding = result.acr.criteria["immunologic"]
    assert finding.result == "unknown"
    assert resources_of(finding.evidence) == ["Observation/o-dsdna"]
    assert finding.evidence[0].note == "cannot tell whether positive"
    assert finding.evidence[0].value == "45 IU/mL"
    assert "immunologic" in result.acr.unknown
    assert "immunologic" not in result.acr.met


def test_coded_negative_answer_is_not_positive(trial):
    """R25: a coded Negative (SNOMED 260385009) is a definite no, not unknown."""
    neg = observation(
        "o-dsdna", "81716-3", "2024-01-01", valueCodeableConcept=concept(SNOMED, "260385009")
    )
    finding = run(trial, [*base(), neg]).acr.criteria["immunologic"]
    assert finding.result == "not-met"


def test_anticardiolipin_40_gpl_meets_immunologic(trial):
    """R23: anticardiolipin IgG/IgM >= 40 GPL/MPL (40 itself included)."""
    acl = observation("o-acl", "8065-5", "2024-01-01", valueQuantity=quantity(40, "GPL"))
    finding = run(trial, [*base(), acl]).acr.criteria["immunologic"]
    assert finding.result == "met"
    assert resources_of(finding.evidence) == ["Observation/o-acl"]


# --------------------------------------------------------------------------- complement "low"


def _c3(value: float, unit: str, **extra) -> dict:
    return observation(
        "o-c3", "4485-9", days_before(10), valueQuantity=quantity(value, unit), **extra
    )


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        # referenceRange.low beats the 90 mg/dL fallback, both ways
        (_c3(85, "mg/dL", referenceRange=[{"low": quantity(80, "mg/dL")}]), "not-met"),
        (_c3(95, "mg/dL", referenceRange=[{"low": quantity(100, "mg/dL")}]), "met"),
        # interpretation L / LL with no range
        (_c3(95, "mg/dL", interpretation=interpretation("L")), "met"),
        (_c3(95, "mg/dL", interpretation=interpretation("LL")), "met"),
        # fallback C3 < 90 mg/dL = 0.9 g/L
        (_c3(89, "mg/dL"), "met"),
        (_c3(90, "mg/dL"), "not-met"),
        (_c3(0.85, "g/L"), "met"),
        (_c3(0.95, "g/L"), "not-met"),
    ],
)
def test_c3_low(trial, obs, expected):
    """R26 + §3.1: C3 "low" = below referenceRange.low or interpretation L/LL; without
    either, below 90 mg/dL (0.9 g/L)."""
    result = run(trial, [*base(), obs])
    finding = result.activity.descriptors["low_complement"]
    assert finding.result == expected
    assert result.activity.score == (2 if expected == "met" else 0)
    assert resources_of(finding.evidence) == (["Observation/o-c3"] if expected == "met" else [])


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [(9, "mg/dL", "met"), (10, "mg/dL", "not-met"), (0.08, "g/L", "met"), (0.12, "g/L", "not-met")],
)
def test_c4_low_fallback(trial, value, unit, expected):
    """R26: without range or flag, C4 < 10 mg/dL (0.1 g/L)."""
    c4 = observation("o-c4", "4498-2", days_before(10), valueQuantity=quantity(value, unit))
    assert run(trial, [*base(), c4]).activity.descriptors["low_complement"].result == expected


def test_c3_interpretation_l_is_low_even_when_value_is_above_range_low(trial):
    """R26: "low" is below referenceRange.low *or* interpretation L/LL (an OR, like "positive")."""
    c3 = _c3(85, "mg/dL", referenceRange=[{"low": quantity(80, "mg/dL")}],
             interpretation=interpretation("L"))  # fmt: skip
    assert run(trial, [*base(), c3]).activity.descriptors["low_complement"].result == "met"


# --------------------------------------------------------------------------- medication exposure


def _washout(trial, *resources, as_of: date = D, medications: dict | None = None):
    result = run(trial, [*base(), *resources], as_of=as_of, medications=medications)
    return result.exclusions["belimumab_washout"]


@pytest.mark.parametrize(
    ("resource", "until"),
    [
        (med_administration("x", "completed", "2026-05-15"), date(2026, 7, 15)),
        (med_administration("x", "in-progress", "2026-05-16"), date(2026, 7, 16)),
        # a period: the exposure is on its end
        (
            med_administration(
                "x", when=None, effectivePeriod={"start": "2026-04-01", "end": "2026-05-10"}
            ),
            date(2026, 7, 10),
        ),
        # MedicationStatement: until effectivePeriod.end or effectiveDateTime
        (
            med_statement(
                "x", "completed", effectivePeriod={"start": "2025-12-01", "end": "2026-05-20"}
            ),
            date(2026, 7, 20),
        ),
        (med_statement("x", "on-hold", effectiveDateTime="2026-05-05"), date(2026, 7, 5)),
        # active with no end date: ongoing, exposure up to D
        (med_statement("x", "active", effectivePeriod={"start": "2025-01-01"}), date(2026, 8, 30)),
        # an exposure running past D is capped at D
        (
            med_statement(
                "x", "completed", effectivePeriod={"start": "2026-06-01", "end": "2026-09-30"}
            ),
            date(2026, 8, 30),
        ),
        # MedicationRequest with an order intent
        (med_request("x", "active", "order", "2026-01-01"), date(2026, 8, 30)),
        (med_request("x", "completed", "original-order", "2026-05-10"), date(2026, 7, 10)),
        (med_request("x", "stopped", "instance-order", "2026-05-11"), date(2026, 7, 11)),
        (med_request("x", "on-hold", "filler-order", "2026-05-12"), date(2026, 7, 12)),
        # dispenseRequest.validityPeriod.end, when present, dates a finished order
        (
            med_request(
                "x",
                "completed",
                authored="2026-03-01",
                dispenseRequest={"validityPeriod": {"start": "2026-03-01", "end": "2026-05-25"}},
            ),
            date(2026, 7, 25),
        ),
    ],
    ids=lambda v: (
        v.get("resourceType", "") + "-" + str(v.get("status")) if isinstance(v, dict) else str(v)
    ),
)
def test_medication_exposure_dates_the_belimumab_washout(trial, resource, until):
    """R10-R13 + R36: each exposure kind/status dates the last exposure; +2 calendar months."""
    finding = _washout(trial, resource)
    assert finding.result == "washout"
    assert finding.until == until
    assert resources_of(finding.evidence) == [f"{resource['resourceType']}/x"]
    assert finding.evidence[0].code == f"{RXNORM}|1092437"


@pytest.mark.parametrize(
    "resource",
    [
        med_administration("x", "not-done"),
        med_administration("x", "entered-in-error"),
        med_administration("x", "stopped"),
        *(
            med_statement("x", status, effectiveDateTime="2026-06-01")
            for status in ("not-taken", "intended", "entered-in-error", "unknown")
        ),
        *(
            med_request("x", status, "order", "2026-06-01")
            for status in ("cancelled", "draft", "entered-in-error", "unknown")
        ),
        med_request("x", "active", "proposal", "2026-06-01"),
        med_request("x", "active", "plan", "2026-06-01"),
    ],
    ids=lambda v: f"{v['resourceType']}-{v['status']}-{v.get('intent', '')}",
)
def test_no_exposure_statuses_and_intents(trial, resource):
    """R10-R12 + §7.12: these statuses/intents are no exposure: no washout, no evidence."""
    finding = _washout(trial, resource)
    assert finding.result == "clear"
    assert finding.evidence == ()


def test_statement_stopped_with_only_a_start_date_counts_on_start_with_a_note(trial):
    """R11: completed/stopped/on-hold with only a start date -> exposure on the start date,
    and a data-quality note."""
    ms = med_statement("ms-bel", "stopped", effectivePeriod={"start": "2026-05-02"})
    result = run(trial, [*base(), ms])
    finding = result.exclusions["belimumab_washout"]
    assert (finding.result, finding.until) == ("washout", date(2026, 7, 2))
    notes = [(n.code, n.where) for n in result.notes]
    assert notes == [("exposure-start-only", "MedicationStatement/ms-bel")]


def test_ongoing_exposure_evidence_says_ongoing(trial):
    """R11 + R13: an active statement with no end is ongoing, capped at D."""
    ms = med_statement("ms-bel", "active", effectivePeriod={"start": "2025-01-01"})
    evidence = _washout(trial, ms).evidence[0]
    assert evidence.date == D
    assert evidence.value == "active; ongoing"


def test_exposure_starting_after_as_of_is_ignored(trial):
    """R3: an active order authored after D is not yet an exposure."""
    mr = med_request("mr", "active", authored="2026-07-01")
    assert _washout(trial, mr).result == "clear"


def test_the_last_exposure_decides(trial):
    """R36: the *last* belimumab exposure dates the washout."""
    older = med_administration("ma-old", when="2026-03-01")
    newer = med_administration("ma-new", when="2026-05-20")
    finding = _washout(trial, newer, older)
    assert finding.until == date(2026, 7, 20)
    assert resources_of(finding.evidence) == ["MedicationAdministration/ma-new"]


@pytest.mark.parametrize(
    ("medication", "contained", "lookup"),
    [
        # contained Medication
        (
            {"medicationReference": {"reference": "#m1"}},
            [
                {
                    "resourceType": "Medication",
                    "id": "m1",
                    "code": drug("1656395", "Benlysta 120 MG"),
                }
            ],
            None,
        ),
        # separate Medication resource
        (
            {"medicationReference": {"reference": "Medication/m2"}},
            None,
            {
                "m2": {
                    "resourceType": "Medication",
                    "id": "m2",
                    "code": drug("1092437", "belimumab"),
                }
            },
        ),
        # brand name in text only
        ({"medicationCodeableConcept": {"text": "BENLYSTA 200 mg/mL autoinjector"}}, None, None),
        # ATC code
        ({"medicationCodeableConcept": concept("http://www.whocc.no/atc", "L04AG04")}, None, None),
    ],
    ids=["contained", "separate", "brand-text", "atc"],
)
def test_drug_identified_by_reference_code_or_name(trial, medication, contained, lookup):
    """R9 + §5: the drug comes from medicationCodeableConcept or a resolved
    medicationReference (contained or separate), matched by code or brand/ingredient name."""
    ma = med_administration("ma", when="2026-06-01")
    del ma["medicationCodeableConcept"]
    ma.update(medication)
    if contained:
        ma["contained"] = contained
    finding = _washout(trial, ma, medications=lookup)
    assert finding.result == "washout"
    assert finding.until == date(2026, 8, 1)
    assert resources_of(finding.evidence) == ["MedicationAdministration/ma"]


def test_biosimilar_pin_name_counts_as_rituximab(trial):
    """§5 + §7.13: "rituximab-abbs" (a PIN) is rituximab -> 6-month biologic washout."""
    ma = med_administration(
        "ma-rtx", when="2026-02-10", medicationCodeableConcept={"text": "rituximab-abbs 500 mg"}
    )
    result = run(trial, [*base(), ma])
    finding = result.exclusions["biologic_washout"]
    assert (finding.result, finding.until) == ("washout", date(2026, 8, 10))
    assert result.exclusions["belimumab_washout"].result == "clear"


def test_jak_inhibitor_is_not_a_biologic(trial):
    """R37 + §5 "policy decisions": tofacitinib is not a biologic for the washout."""
    ma = med_administration(
        "ma-tofa", when="2026-06-01", medicationCodeableConcept=drug("1357536", "tofacitinib")
    )
    assert run(trial, [*base(), ma]).exclusions["biologic_washout"].result == "clear"


# --------------------------------------------------------------------------- calendar months


@pytest.mark.parametrize(
    ("last", "as_of", "result", "until"),
    [
        ("2025-08-31", date(2026, 2, 27), "washout", date(2026, 2, 28)),
        ("2025-08-31", date(2026, 2, 28), "clear", None),  # until == D is not > D
        ("2027-08-31", date(2028, 2, 28), "washout", date(2028, 2, 29)),  # leap year
    ],
)
def test_six_calendar_months_clamp_to_month_end(trial, last, as_of, result, until):
    """R15 + R37: 31 Aug + 6 calendar months = 28 (or 29) Feb; washout while that is > D."""
    ma = med_administration(
        "ma-rtx", when=last, medicationCodeableConcept=drug("121191", "rituximab")
    )
    finding = run(trial, [*base(), ma], as_of=as_of).exclusions["biologic_washout"]
    assert finding.result == result
    assert finding.until == until
    assert resources_of(finding.evidence) == ["MedicationAdministration/ma-rtx"]
    assert finding.evidence[0].note == f"+6 calendar months = {(until or as_of).isoformat()}"


def test_washout_status_and_eligible_from_is_the_later_end(trial):
    """R44 + R47: would-be eligible with washouts running -> washout, eligible_from = later end."""
    bel = med_administration("ma-bel", when="2026-06-15")  # until 2026-08-15
    rtx = med_administration(
        "ma-rtx", when="2026-03-01", medicationCodeableConcept=drug("121191", "rituximab")
    )  # until 2026-09-01
    result = run(trial, [*eligible_core(), bel, rtx])
    assert result.status == "washout"
    assert result.eligible_from == date(2026, 9, 1)
    assert result.exclusions["belimumab_washout"].until == date(2026, 8, 15)


def test_eligible_from_reported_whatever_the_status(trial):
    """R47: a running washout's end is reported even when the patient is excluded."""
    bel = med_administration("ma-bel", when="2026-06-15")
    hiv = condition("c-b20", ICD10, "B20")
    result = run(trial, [*eligible_core(), bel, hiv])
    assert result.status == "excluded"
    assert result.eligible_from == date(2026, 8, 15)


# --------------------------------------------------------------------------- deceased, age


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"deceasedDateTime": "2026-07-01"}, "clear"),
        ({"deceasedDateTime": "2026-06-30T09:00:00Z"}, "excluded"),
        ({"deceasedBoolean": True}, "excluded"),
        ({"deceasedBoolean": False}, "clear"),
    ],
)
def test_deceased(trial, extra, expected):
    """R38 + R3: deceasedBoolean true or deceasedDateTime on/before D excludes; after D is
    ignored."""
    resources = eligible_core()
    resources[0] = patient(**extra)
    result = run(trial, resources)
    assert result.exclusions["deceased"].result == expected
    assert result.status == ("excluded" if expected == "excluded" else "eligible")
    if expected == "excluded":
        assert resources_of(result.exclusions["deceased"].evidence) == ["Patient/p1"]


@pytest.mark.parametrize(
    ("birth", "age_result", "age", "status"),
    [
        ("2008", "unknown", None, "needs-review"),  # 17 or 18 at D
        ("1960", "unknown", None, "needs-review"),  # 65 or 66 at D
        ("1990", "met", None, "eligible"),  # 35 or 36: both in range
        ("2008-06-30", "met", 18, "eligible"),  # 18th birthday is D
        ("1960-06-30", "not-met", 66, "excluded"),  # 66th birthday is D
        ("not a date", "unknown", None, "needs-review"),
    ],
)
def test_age_and_partial_birth_dates(trial, birth, age_result, age, status):
    """R18 + §7.17: completed years at D; a partial birthDate that leaves the answer open is
    unknown (-> needs-review, never excluded)."""
    resources = eligible_core()
    resources[0] = patient(birth=birth)
    result = run(trial, resources)
    assert (result.age.result, result.age.age, result.status) == (age_result, age, status)


# --------------------------------------------------------------------------- candidate pool


def test_lupus_erythematosus_200936003_alone_is_a_candidate(trial):
    """R41 + §7.3: 200936003 "Lupus erythematosus" counts as an SLE code for the pool."""
    result = run(trial, [patient(), sle(code="200936003")])
    assert result.candidate is True
    assert result.status == "needs-review"
    assert result.acr.count == 0


def test_three_acr_criteria_without_sle_code_is_not_a_candidate(trial):
    """R41: no SLE code and < 4 ACR criteria -> not-a-candidate, whatever else is true."""
    resources = [
        patient(),
        # (not 95332009 "rash of SLE": that is itself an SLE code, §2)
        condition("c-photo", SNOMED, "90128006"),
        condition("c-arthritis", SNOMED, "3723001"),
        condition("c-ulcers", ICD10, "K12.0"),
        condition("c-b20", ICD10, "B20"),  # an exclusion does not list them either
    ]
    result = run(trial, resources)
    assert result.acr.count == 3
    assert result.candidate is False
    assert result.status == "not-a-candidate"

    resources.append(observation("o-ana", "5048-4", "2024-01-01", valueString="1:160"))
    result = run(trial, resources)
    assert (result.acr.count, result.candidate, result.status) == (4, True, "excluded")


# --------------------------------------------------------------------------- infections


def _hcv_ab(when: str, rid: str = "o-hcv-ab") -> dict:
    return observation(rid, "13955-0", when, valueString="Reactive")


def _hcv_rna(when: str, value: str = "Not detected", rid: str = "o-hcv-rna") -> dict:
    return observation(rid, "11259-9", when, valueString=value)


@pytest.mark.parametrize(
    ("rna_date", "expected"),
    [("2025-02-01", "clear"), ("2025-01-10", "clear"), ("2024-12-01", "review")],
    ids=["rna-after", "rna-same-day", "rna-before"],
)
def test_hcv_antibody_then_rna_not_detected(trial, rna_date, expected):
    """R35: antibody reactive and an RNA not detected on or after its date -> clear; with
    only an RNA before it -> review, the evidence naming the antibody result."""
    finding = run(trial, [*base(), _hcv_ab("2025-01-10"), _hcv_rna(rna_date)]).exclusions[
        "hepatitis_c"
    ]
    assert finding.result == expected
    if expected == "review":
        assert resources_of(finding.evidence) == ["Observation/o-hcv-ab"]
    else:
        assert finding.evidence == ()


def test_hcv_latest_rna_detected_excludes(trial):
    """R35: the latest HCV RNA detected -> excluded (evidence: that RNA); an earlier
    detected RNA superseded by a later not-detected one does not exclude."""
    early = _hcv_rna("2024-01-01", "Detected", "o-rna-1")
    late = _hcv_rna("2025-01-01", "Not detected", "o-rna-2")
    finding = run(trial, [*base(), late, early]).exclusions["hepatitis_c"]
    assert finding.result == "clear"
    finding = run(trial, [*base(), _hcv_rna("2025-06-01", "Detected", "o-rna-3"), late]).exclusions[
        "hepatitis_c"
    ]
    assert finding.result == "excluded"
    assert resources_of(finding.evidence) == ["Observation/o-rna-3"]


def test_hepatitis_b_latest_hbsag_result_decides(trial):
    """R34: by the latest result of each test, HBsAg positive -> excluded."""
    pos = observation("o-hbs-1", "5196-1", "2024-01-01", valueString="Positive")
    neg = observation("o-hbs-2", "5196-1", "2025-01-01", valueString="Negative")
    assert run(trial, [*base(), pos, neg]).exclusions["hepatitis_b"].result == "clear"

    pos_late = observation("o-hbs-3", "5196-1", "2025-06-01", valueString="Positive")
    finding = run(trial, [*base(), neg, pos_late]).exclusions["hepatitis_b"]
    assert finding.result == "excluded"
    assert resources_of(finding.evidence) == ["Observation/o-hbs-3"]


def test_hbv_dna_latest_detected_excludes(trial):
    """R34 + R25 exception: quantitative HBV DNA above zero with no '<' is detected."""
    dna = observation("o-hbv-dna", "42595-9", "2025-06-01", valueQuantity=quantity(250, "IU/mL"))
    finding = run(trial, [*base(), dna]).exclusions["hepatitis_b"]
    assert finding.result == "excluded"
    assert resources_of(finding.evidence) == ["Observation/o-hbv-dna"]


def test_anti_hbc_alone_is_review(trial):
    """R34 + §7.16: anti-HBc positive with no HBsAg/DNA infection -> review."""
    hbc = observation("o-hbc", "16933-4", "2025-01-01", valueString="Reactive")
    hbs = observation("o-hbs", "5196-1", "2025-01-01", valueString="Non-reactive")
    finding = run(trial, [*base(), hbc, hbs]).exclusions["hepatitis_b"]
    assert finding.result == "review"
    assert resources_of(finding.evidence) == ["Observation/o-hbc"]


def test_hbv_immunity_code_is_not_infection(trial):
    """R34 + §4.3: 271511000 "Hepatitis B immune" is not an HBV infection."""
    immune = condition("c-immune", SNOMED, "271511000")
    assert run(trial, [*base(), immune]).exclusions["hepatitis_b"].result == "clear"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (quantity(20, "{copies}/mL", "<"), "clear"),
        (quantity(0, "copies/mL"), "clear"),
        (quantity(48, "copies/mL"), "excluded"),
    ],
)
def test_hiv_rna_viral_load(trial, value, expected):
    """R25 exception + R33: a viral RNA result above zero without '<' is detected; '<20'
    is not detected -> clear."""
    rna = observation("o-hiv-rna", "20447-9", "2025-05-05", valueQuantity=value)
    finding = run(trial, [*base(), rna]).exclusions["hiv"]
    assert finding.result == expected
    assert resources_of(finding.evidence) == (
        ["Observation/o-hiv-rna"] if expected == "excluded" else []
    )


def test_hiv_rna_written_detected_below_lloq_is_positive(trial):
    """§4.3: "<20 copies/mL, detected" (below the LLOQ) is detected."""
    rna = observation("o-hiv-rna", "20447-9", "2025-05-05", valueString="<20 copies/mL, detected")
    finding = run(trial, [*base(), rna]).exclusions["hiv"]
    assert finding.result == "excluded"
    assert resources_of(finding.evidence) == ["Observation/o-hiv-rna"]


def test_hiv_rna_below_lloq_flagged_det_is_positive(trial):
    """R25 + §4.3: interpretation DET is positive, even on a '<20 copies/mL' quantity."""
    rna = observation(
        "o-hiv-rna",
        "20447-9",
        "2025-05-05",
        valueQuantity=quantity(20, "copies/mL", "<"),
        interpretation=interpretation("DET"),
    )
    assert run(trial, [*base(), rna]).exclusions["hiv"].result == "excluded"


@pytest.mark.parametrize(
    ("system", "code"), [(ICD10, "Z20.6"), (ICD10, "Z11.4"), (SNOMED, "165815009")]
)
def test_hiv_exposure_screening_and_negative_codes_do_not_exclude(trial, system, code):
    """R33: never Z20.6, Z11.4 or 165815009 "HIV negative"."""
    assert run(trial, [*base(), condition("c", system, code)]).exclusions["hiv"].result == "clear"


def test_refuted_hiv_condition_does_not_count(trial):
    """R6: a Condition with verificationStatus refuted or entered-in-error does not count."""
    refuted = condition("c-b20", ICD10, "B20", verification="refuted")
    assert run(trial, [*base(), refuted]).exclusions["hiv"].result == "clear"


def test_refuted_condition_without_status_system_does_not_count(trial):
    """R6: refuted is refuted even when the feed omits the status CodeSystem URL."""
    refuted = condition("c-b20", ICD10, "B20", verification=None)
    refuted["verificationStatus"] = {"coding": [{"code": "refuted"}]}
    assert run(trial, [*base(), refuted]).exclusions["hiv"].result == "clear"


def test_unparseable_onset_falls_back_to_recorded_date(trial):
    """R6 + R32: a dated Condition with no clinicalStatus is current; the date falls back
    to recordedDate when onset[x] gives none. Rules page, "values the tool cannot read":
    the invalid onset is skipped for recordedDate, and a record that could then exclude
    the patient makes the exclusion review, never excluded on a value it cannot read."""
    z992 = condition("c-z992", ICD10, "Z99.2", onset="last spring", clinical=None,
                     recordedDate="2025-03-01")  # fmt: skip
    finding = run(trial, [*base(), z992]).exclusions["dialysis"]
    assert finding.result == "review"
    assert [(e.resource, e.date) for e in finding.evidence] == [
        ("Condition/c-z992", date(2025, 3, 1))
    ]
    assert finding.evidence[0].note == (
        "cannot be read: onsetDateTime 'last spring' is not a FHIR dateTime"
    )
    # read without the invalid onset, the same record excludes
    del z992["onsetDateTime"]
    assert run(trial, [*base(), z992]).exclusions["dialysis"].result == "excluded"


# --------------------------------------------------------------------------- CNS lupus


@pytest.mark.parametrize(
    ("clinical", "expected"),
    [("active", "excluded"), ("resolved", "review"), ("remission", "review")],
)
def test_cns_lupus_current_excludes_resolved_reviews(trial, clinical, expected):
    """R31: current lupus-specific CNS code -> excluded; only resolved/inactive/remission ->
    review; the evidence names the Condition."""
    cns = condition("c-cns", SNOMED, "95644001", clinical=clinical)
    finding = run(trial, [*base(), cns]).exclusions["cns_lupus"]
    assert finding.result == expected
    assert resources_of(finding.evidence) == ["Condition/c-cns"]


def test_generic_neuro_codes_do_not_trigger_cns_exclusion(trial):
    """R31: generic M32.19 / delirium / psychosis codes alone do not exclude."""
    resources = [
        *base(),
        condition("c-m3219", ICD10, "M32.19"),
        condition("c-delirium", SNOMED, "2776000"),
        condition("c-psychosis", SNOMED, "69322001"),
    ]
    assert run(trial, resources).exclusions["cns_lupus"].result == "clear"


# --------------------------------------------------------------------------- purity


def test_evaluate_is_pure(trial):
    """The evaluator is pure (evaluator.py docstring; pipeline relies on it): same facts,
    same result, and the frozen facts are not changed by evaluating them."""
    resources = [
        *eligible_core(),
        med_statement("ms-bel", "stopped", effectivePeriod={"start": "2026-05-02"}),
        observation("o-wbc", "6690-2", "2026-06-02", valueQuantity=quantity(3.1, "/uL")),
    ]
    facts = facts_of(resources)
    before = pickle.dumps(facts)
    first = evaluate(facts, trial, D)
    second = evaluate(facts, trial, D)
    assert first == second
    assert pickle.dumps(facts) == before
    assert first.status == "washout"
    assert [n.code for n in first.notes] == ["exposure-start-only", "suspect-unit"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.labs = ()  # type: ignore[misc]
    # A different as-of date from the same facts gives a different, equally repeatable answer.
    assert evaluate(facts, trial, date(2026, 8, 1)).status == "eligible"
    assert evaluate(facts, trial, D) == first
