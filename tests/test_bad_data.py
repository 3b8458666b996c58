"""Issue 10, records: bad data can never make a patient look more eligible.

Each test takes the bundled cohort, breaks one value the way the issue found it broken,
screens it, and checks the outcome patient by patient: the run finishes, the patient the
value belongs to is never more eligible than the unbroken cohort says
(fixtures/misle-cohort.expected.json), and where the value could change the outcome the
patient is needs-review with a reason that names the record and the element (rules pages,
"values the tool cannot read").
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from datetime import date
from pathlib import Path

import pytest

from fhir_cohort.criteria.language import load as load_trial
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 6, 30)
EXPECTED = json.loads((ROOT / "fixtures" / "misle-cohort.expected.json").read_text())["patients"]


def _mutations():
    spec = importlib.util.spec_from_file_location("mutations", ROOT / "bench" / "mutations.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


MUTATIONS = _mutations()
COHORT = MUTATIONS.load()
TRIAL = load_trial("misle")

P01, P11, P22 = "p01-eligible-baseline", "p11-deceased-boolean", "p22-entered-in-error-criterion"
P80, P88, P94 = "p80-dialysis-procedure-30d", "p88-anti-hbc-alone", "p94-belimumab-admin-40d"
P104, P115 = "p104-medication-reference", "p115-dup-later-copy-second"
P17 = "p17-no-sle-code-3-acr"


def find(files: dict, rid: str, rtype: str | None = None, nth: int = 0) -> dict:
    """The ``nth`` resource with this id (and type) anywhere in the cohort."""
    found = [
        MUTATIONS.resource_at(files, place)
        for place in MUTATIONS.places(files)
        if MUTATIONS.resource_at(files, place).get("id") == rid
        and rtype in (None, MUTATIONS.resource_at(files, place).get("resourceType"))
    ]
    return found[nth]


def cohort(tmp_path: Path, edit=None) -> Path:
    """The cohort, written to a folder after ``edit(files)`` changed its parsed copy."""
    files = copy.deepcopy(COHORT)
    if edit:
        edit(files)
    folder = tmp_path / "cohort"
    MUTATIONS.write(files, folder)
    return folder


def screened(folder: Path, **options) -> dict:
    return screening_dict(screen([FileSource(folder, **options)], TRIAL, AS_OF))


def listed(output: dict) -> dict[str, dict]:
    return {c["patient"]: c for c in output["candidates"]}


def notes(output: dict) -> dict[str, dict]:
    return {n["code"]: n for n in output["data_quality"]}


def status(output: dict, patient: str) -> str:
    return listed(output).get(patient, {}).get("status", "not-a-candidate")


def held_back(output: dict) -> dict[str, tuple[str, str]]:
    """What partial input must do: every patient eligible or in a washout on the unbroken
    cohort is needs-review, for the reason that input was not all read."""
    return {
        p: (e["status"], "needs-review")
        for p, e in EXPECTED.items()
        if e["status"] in ("eligible", "washout")
    }


def changed(output: dict) -> dict[str, tuple[str, str]]:
    """Patients whose status differs from the unbroken cohort's: (expected, got)."""
    got = {p: status(output, p) for p in EXPECTED}
    return {p: (EXPECTED[p]["status"], s) for p, s in got.items() if s != EXPECTED[p]["status"]}


# --------------------------------------------------------------------------- crashes


def _set(rid: str, path: tuple, value: object, rtype: str | None = None):
    def edit(files: dict) -> None:
        MUTATIONS.put(find(files, rid, rtype), path, value)

    return edit


CRASHES = {
    # the list of single values that crashed the whole screen with exit 1
    "coding.code a list": (
        _set(f"{P01}-1", ("code", "coding", 0, "code"), ["55464009"]),
        P01,
        'code.coding[0].code ["55464009"] is not a string',
    ),
    "coding a number": (
        _set(f"{P01}-1", ("code", "coding"), 5),
        P01,
        "code.coding 5 is not a JSON array",
    ),
    "Patient.name not a list": (
        _set(P01, ("name",), "Aoife O'Brien", "Patient"),
        None,
        "name 'Aoife O'Brien' is not a JSON array",
    ),
    "name.given a boolean": (
        _set(P01, ("name", 0, "given"), True, "Patient"),
        None,
        "name[0].given true is not a JSON array",
    ),
    "Medication code list": (
        _set("med-rituximab", ("code", "coding", 0, "code"), ["121191"]),
        P104,
        'Medication/med-rituximab: code.coding[0].code ["121191"] is not a string',
    ),
}


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_a_wrong_json_type_is_a_note_never_a_crash(tmp_path, case):
    """Issue 10 "Crashes": each of these ended the whole run with exit 1. Now the run
    finishes; the value is a note with its element path; a record whose code cannot be read
    puts its patient to review (with the reason); a name that cannot be read decides
    nothing (the patient keeps their status)."""
    edit, patient, message = CRASHES[case]
    output = screened(cohort(tmp_path, edit))
    found = notes(output)["invalid-element"]
    assert found["count"] >= 1
    assert message in [e["message"] for e in found["examples"]]
    if patient is None:
        assert changed(output) == {}
        return
    assert changed(output) == {patient: (EXPECTED[patient]["status"], "needs-review")}
    reasons = " | ".join(listed(output)[patient]["reasons"])
    assert message in reasons


def test_a_bundle_entry_that_is_a_number_is_a_note(tmp_path):
    """Issue 10: a Bundle whose ``entry`` is a number crashed the run. Now it is noted,
    and its patient (named in its bytes) cannot be read: the run is partial only when
    nobody is named."""

    def edit(files: dict) -> None:
        files["bundles/p118-bundle-transaction.json"]["entry"] = 5

    output = screened(cohort(tmp_path, edit))
    assert notes(output)["not-a-resource"]["examples"][0]["message"] == (
        "Bundle.entry is not a JSON array; names no patient"
    )
    assert notes(output)["unattributed-record"]["count"] == 1  # partial: exit 4
    # its only patient's records are all in that Bundle: gone, and never more eligible;
    # a record nobody can be named for could be anyone's: every other candidate waits
    assert changed(output) == {
        **held_back(output),
        "p118-bundle-transaction": ("eligible", "not-a-candidate"),
    }
    assert all(
        c["reasons"][-1].startswith("not all input could be read (1 unattributed-record")
        for c in output["candidates"]
        if c["status"] == "needs-review"
    )


def test_a_line_holding_only_a_string_is_unreadable_not_a_crash(tmp_path):
    folder = cohort(tmp_path)
    path = folder / "Medication.000.ndjson"
    path.write_bytes(path.read_bytes() + b'"Medication"\n')
    output = screened(folder)
    assert changed(output) == held_back(output)
    assert notes(output)["not-a-resource"]["examples"][0]["where"] == f"{path}:2"
    assert notes(output)["unattributed-record"]["count"] == 1  # it names nobody: partial


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("rid", "patient", "field", "value", "exclusion"),
    [
        # read by prefix as 2026-01-01 (washout over) and as 9999 (after D): both eligible
        (f"{P94}-7", P94, "effectiveDateTime", "2026-5-21", "belimumab_washout"),
        (f"{P80}-7", P80, "performedDateTime", "99999-01-01", "dialysis"),
        # noted as bad dates, but the exclusion whose only date it was dropped to clear
        (f"{P80}-7", P80, "performedDateTime", "2026-02-30", "dialysis"),
        (f"{P80}-7", P80, "performedDateTime", "0000-00-00", "dialysis"),
    ],
)
def test_an_invalid_date_never_clears_an_exclusion(tmp_path, rid, patient, field, value, exclusion):
    """Issue 10 "dates matched by prefix" and "an exclusion whose only date is unreadable
    is dropped": dates follow the FHIR grammar; a record whose only date cannot be read
    could fall anywhere, so the exclusion it could trigger is review, never clear."""
    output = screened(cohort(tmp_path, _set(rid, (field,), value)))
    assert changed(output) == {patient: (EXPECTED[patient]["status"], "needs-review")}
    candidate = listed(output)[patient]
    assert candidate["exclusions"][exclusion]["result"] == "review"
    message = f"{field} '{value}' is not a FHIR dateTime"
    assert notes(output)["bad-date"]["examples"][0]["message"] == message
    assert any(
        r.startswith(f"{exclusion} needs review: ") and message in r for r in candidate["reasons"]
    )


# --------------------------------------------------------------------------- statuses and types


def test_deceased_boolean_as_a_string_is_review_not_alive(tmp_path):
    """Issue 10: ``deceasedBoolean: "true"`` read as not deceased (eligible)."""
    output = screened(cohort(tmp_path, _set(P11, ("deceasedBoolean",), "true", "Patient")))
    assert changed(output) == {P11: ("excluded", "needs-review")}
    deceased = listed(output)[P11]["exclusions"]["deceased"]
    assert deceased["result"] == "review"
    assert (
        deceased["evidence"][0]["note"]
        == "cannot be read: deceasedBoolean 'true' is not true or false"
    )


@pytest.mark.parametrize("value", ["garbage", None])
def test_a_medication_status_that_is_no_fhir_code_never_drops_a_washout(tmp_path, value):
    """Issue 10: a medication record with a garbage or missing status dropped the washout."""

    def edit(files: dict) -> None:
        resource = find(files, f"{P94}-7")
        if value is None:
            del resource["status"]
        else:
            resource["status"] = value

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {P94: ("washout", "needs-review")}
    candidate = listed(output)[P94]
    washout = candidate["exclusions"]["belimumab_washout"]
    assert washout["result"] == "review"
    why = "status 'garbage' is not a FHIR code" if value else "status is missing (FHIR requires it)"
    assert washout["evidence"][0]["resource"] == f"MedicationAdministration/{P94}-7"
    assert washout["evidence"][0]["note"].startswith(f"cannot be read: {why}")
    assert candidate["eligible_from"] is None  # no readable washout runs; review says why


def test_verification_status_coding_as_an_object_never_lets_a_condition_count(tmp_path):
    """Issue 10: ``verificationStatus.coding`` given as an object let an entered-in-error
    Condition count (p22's malar rash: 4 ACR criteria, eligible)."""

    def edit(files: dict) -> None:
        condition = find(files, f"{P22}-6")
        assert condition["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
        condition["verificationStatus"]["coding"] = condition["verificationStatus"]["coding"][0]

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {}  # still needs-review, never eligible
    malar = listed(output)[P22]["criteria"]["acr"]["criteria"]["malar_rash"]
    assert malar["result"] == "unknown"
    assert "verificationStatus.coding" in malar["evidence"][0]["note"]


def test_an_observation_status_that_is_no_fhir_code_still_needs_review(tmp_path):
    """Issue 10: an Observation whose status is not a FHIR code stopped counting, so p88,
    who needed review for its anti-HBc result, became eligible."""
    output = screened(cohort(tmp_path, _set(f"{P88}-7", ("status",), "FINAL")))
    assert changed(output) == {}
    hepatitis_b = listed(output)[P88]["exclusions"]["hepatitis_b"]
    assert hepatitis_b["result"] == "review"
    assert hepatitis_b["evidence"][0]["note"] == "cannot be read: status 'FINAL' is not a FHIR code"


def test_a_record_whose_subject_is_true_weighs_on_every_candidate(tmp_path):
    """Issue 10: a MedicationAdministration whose subject is ``true`` dropped out of its
    patient's washout. It names no patient it can be attributed to: it could be anyone's,
    so no candidate's belimumab washout can be clear; every one needs review."""
    output = screened(cohort(tmp_path, _set(f"{P94}-7", ("subject",), True)))
    assert notes(output)["no-patient-reference"]["examples"][0]["where"].endswith(
        "MedicationAdministration.000.ndjson.gz:2"
    )
    after = changed(output)
    assert after[P94] == ("washout", "needs-review")
    # it could start a washout for anyone eligible, or extend one ending before its own end
    could = {
        p
        for p, case in EXPECTED.items()
        if case["status"] == "eligible"
        or (
            case["status"] == "washout"
            and case["exclusions"].get("belimumab_washout", {"until": ""})["until"] < "2026-07-21"
        )
    }
    assert set(after) == could | {P94}  # P94's own washout was this very record
    assert all(new == "needs-review" for _, new in after.values())
    reasons = listed(output)[P01]["reasons"]
    assert reasons == [
        f"belimumab_washout needs review: MedicationAdministration/{P94}-7: cannot be read: "
        "names no patient it can be attributed to; it could be this patient's; "
        "at worst +2 calendar months = 2026-07-21"
    ]


def test_a_numeric_medication_reference_never_drops_a_washout(tmp_path):
    """Issue 10 (the Medication lookup): a reference that is a number named no drug, so
    the rituximab washout of p104 was dropped."""
    output = screened(cohort(tmp_path, _set(f"{P104}-7", ("medicationReference", "reference"), 5)))
    assert changed(output) == {P104: ("washout", "needs-review")}
    assert listed(output)[P104]["exclusions"]["biologic_washout"]["result"] == "review"


def test_invalid_but_irrelevant_values_cost_nothing(tmp_path):
    """A record whose reading is certain but irrelevant costs nothing: a wrong type in an
    element the tool does not read (an identifier, a category) changes no outcome and
    adds no note."""

    def edit(files: dict) -> None:
        find(files, P01, "Patient")["identifier"] = "MRN"
        find(files, f"{P80}-7")["category"] = 7
        find(files, f"{P88}-7")["category"] = [5]

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {}
    assert "invalid-element" not in notes(output)


# --------------------------------------------------------------------------- duplicates


def test_a_duplicate_decided_by_an_unreadable_last_updated_counts_for_no_one(tmp_path):
    """Rules page: a copy whose meta.lastUpdated is no FHIR instant counts as the oldest.
    p115's later copy is entered-in-error; stamped 9999 (after this run started), it would
    lose to the counting copy and make p115 eligible. When the choice rests on a stamp that
    cannot be read, no copy counts in the patient's favour: p115 stays needs-review."""

    def edit(files: dict) -> None:
        find(files, f"{P115}-6", nth=1)["meta"]["lastUpdated"] = "9999-01-01T00:00:00Z"

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {}
    assert notes(output)["bad-last-updated"]["examples"] == [
        {
            "where": f"Observation/{P115}-6",
            "message": "meta.lastUpdated '9999-01-01T00:00:00Z' is after this run started; "
            "counted as the oldest copy",
        }
    ]
    candidate = listed(output)[P115]
    assert candidate["criteria"]["acr"]["criteria"]["immunologic"]["result"] == "unknown"
    assert [n["code"] for n in candidate["notes"]].count("conflicting-duplicate") == 1


def test_copies_that_disagree_are_noted_on_the_patient(tmp_path):
    """Issue 10: a duplicate replaced the real record and nothing told the reviewer that the
    copies disagreed. The rule still decides (p116: the later, amended copy wins), and the
    patient's card says which copies differed."""
    output = screened(cohort(tmp_path))
    assert changed(output) == {}
    card = [n for n in listed(output)["p116-dup-later-copy-first"]["notes"]]
    assert [n["code"] for n in card] == ["conflicting-duplicate"]
    assert card[0]["message"].startswith("2 copies of Observation/p116-dup-later-copy-first-")
    assert card[0]["message"].endswith(
        "differ in what the trial reads; the copy with the later meta.lastUpdated "
        "(else the first seen) is used"
    )
    assert notes(output)["conflicting-duplicate"]["count"] == 2  # p115 and p116


def test_a_copy_without_last_updated_is_the_oldest(tmp_path):
    """Rules page: a copy without meta.lastUpdated counts as the oldest. Issue 10: a copy
    with no meta replaced the real record (it was kept because it came first). Here p115's
    counting copy, listed first, loses its meta: the stamped entered-in-error copy still
    wins, so p115 does not become eligible."""

    def edit(files: dict) -> None:
        first = find(files, f"{P115}-6")
        assert first["status"] == "final"
        del first["meta"]

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {}
    immunologic = listed(output)[P115]["criteria"]["acr"]["criteria"]["immunologic"]
    assert immunologic["result"] == "not-met"


# --------------------------------------------------------------------------- the candidate pool


def test_a_patient_whose_only_pool_evidence_cannot_be_read_is_listed_for_review(tmp_path):
    """p15's only pool evidence is an SLE Condition. With its code written as a string
    instead of a CodeableConcept it was dropped at ingest and p15 silently counted as
    not-a-candidate; now p15 is listed as needs-review, saying why."""
    p15 = "p15-synthea-200936003-only"
    output = screened(cohort(tmp_path, _set(f"{p15}-1", ("code",), "200936003")))
    assert changed(output) == {}  # needs-review before, needs-review now: but why differs
    assert listed(output)[p15]["reasons"][0] == (
        f"may be a candidate: pool evidence cannot be read (Condition/{p15}-1: cannot be "
        "read: code '200936003' is not a JSON object (a CodeableConcept))"
    )


def test_criteria_that_records_that_cannot_be_read_may_meet_list_the_patient(tmp_path):
    """p17 (no SLE code, 3 ACR criteria) is not a candidate. An ANA result whose status is
    not a FHIR code could be the fourth criterion: p17 is listed as needs-review (never
    eligible), saying which criterion is open and why."""

    def edit(files: dict) -> None:
        ana = copy.deepcopy(find(files, f"{P01}-4", "Observation"))
        assert ana["code"]["coding"][0]["code"] == "5048-4"  # p01's ANA 1:160
        ana.update(id="p17-ana", status="Final", subject={"reference": f"Patient/{P17}"})
        files["Observation.000.ndjson"].append(ana)

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {P17: ("not-a-candidate", "needs-review")}
    assert listed(output)[P17]["reasons"][0] == (
        "may be a candidate: 3 criteria met, and ana may be met by records that cannot be "
        "read (Observation/p17-ana: cannot be read: status 'Final' is not a FHIR code)"
    )


# --------------------------------------------------------------------------- JSON null
# Found by the long mutation run (docs/mutations.md): FHIR JSON has no nulls, and a null
# read as "absent" dropped an anti-HBc result (p88 eligible) and a belimumab order (p101).


def test_a_null_code_is_a_code_that_cannot_be_read(tmp_path):
    output = screened(cohort(tmp_path, _set(f"{P88}-7", ("code", "coding", 0, "code"), None)))
    assert changed(output) == {}
    hepatitis_b = listed(output)[P88]["exclusions"]["hepatitis_b"]
    assert hepatitis_b["result"] == "review"
    assert "code.coding[0].code null is not a string" in hepatitis_b["evidence"][0]["note"]


def test_a_null_medication_is_a_drug_that_cannot_be_read(tmp_path):
    p101 = "p101-belimumab-request-active"
    output = screened(cohort(tmp_path, _set(f"{p101}-7", ("medicationCodeableConcept",), None)))
    assert changed(output) == {p101: ("washout", "needs-review")}
    washout = listed(output)[p101]["exclusions"]["belimumab_washout"]
    assert washout["result"] == "review"
    assert "medication null is not a JSON object" in washout["evidence"][0]["note"]


def test_a_null_last_updated_is_no_instant_and_decides_no_duplicate(tmp_path):
    """p115's later (entered-in-error) copy with ``lastUpdated: null``: no instant, so it
    counts as the oldest, and the choice that rests on it counts in nobody's favour."""

    def edit(files: dict) -> None:
        find(files, f"{P115}-6", nth=1)["meta"]["lastUpdated"] = None

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {}
    assert notes(output)["bad-last-updated"]["examples"][0]["message"] == (
        "meta.lastUpdated 'null' is not a FHIR instant; counted as the oldest copy"
    )


@pytest.mark.parametrize("onset", ["9999-99-99", None, ["2020-05-05"]])
def test_an_unreadable_date_leaves_a_condition_without_status_possibly_current(tmp_path, onset):
    """Found by the second long run: p93's chronic HBV Condition has no clinicalStatus and
    counts as current because it is dated. With its only date unreadable it was read as
    undated, so not current (p93 eligible); it may be dated, so hepatitis_b is review."""
    p93 = "p93-hbv-condition-no-clinical-status"
    output = screened(cohort(tmp_path, _set(f"{p93}-7", ("onsetDateTime",), onset)))
    assert changed(output) == {p93: ("excluded", "needs-review")}
    assert listed(output)[p93]["exclusions"]["hepatitis_b"]["result"] == "review"
