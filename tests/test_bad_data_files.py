"""Issue 10, files and references: a byte-order mark, lines that are not UTF-8 or not
JSON, bombs, references that point elsewhere, and the exit codes they mean.

An unreadable line is attributed to the patient its bytes name (that patient, if a
candidate, needs review: "unreadable record on line N of F"); one that names nobody means
the input was not all read (exit 4). Records that are invalid but read leave the run
complete (exit 0) and it stays the baseline of the next run.
"""

from __future__ import annotations

import gzip
import json

import orjson
import pytest
from test_bad_data import (
    AS_OF,
    EXPECTED,
    P01,
    P17,
    P80,
    P94,
    TRIAL,
    changed,
    cohort,
    find,
    listed,
    notes,
    screened,
)

from fhir_cohort.cli import main
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources.files import FileLimits, FileSource

PROCEDURES = "Procedure.000.ndjson"


def _line_of(folder, name: str, rid: str) -> tuple[int, bytes]:
    lines = (folder / name).read_bytes().split(b"\n")
    number = next(i for i, line in enumerate(lines, 1) if f'"id":"{rid}"'.encode() in line)
    return number, lines[number - 1]


def _replace_line(folder, name: str, number: int, new: bytes) -> None:
    path = folder / name
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = new
    path.write_bytes(b"\n".join(lines))


# --------------------------------------------------------------------------- bytes


def test_a_byte_order_mark_is_not_data(tmp_path):
    """Issue 10: a BOM at the start of a file dropped its first line (4 patients became
    eligible). It is not data: the first line is read like any other."""
    folder = cohort(tmp_path)
    for name in (
        "Patient.000.ndjson",
        "Condition.000.ndjson",
        "bundles/p118-bundle-transaction.json",
    ):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    output = screened(folder)
    assert changed(output) == {}
    assert "invalid-json" not in notes(output)


def test_a_line_that_is_not_utf8_is_read_as_one_that_cannot_be_read(tmp_path):
    """Issue 10: a line that was not valid UTF-8 was dropped and counted only as
    invalid-json, even when it was a dialysis Procedure (p80 became eligible). Read with
    its bad byte replaced, it still names p80 and its code; it cannot be read for certain,
    so the dialysis exclusion it could trigger is review."""
    folder = cohort(tmp_path)
    number, line = _line_of(folder, PROCEDURES, f"{P80}-7")
    _replace_line(folder, PROCEDURES, number, line.replace(b"Hemodialysis", b"H\xe9modialysis"))
    output = screened(folder)
    assert changed(output) == {P80: ("excluded", "needs-review")}
    assert (
        notes(output)["invalid-utf8"]["examples"][0]["where"] == f"{folder / PROCEDURES}:{number}"
    )
    dialysis = listed(output)[P80]["exclusions"]["dialysis"]
    assert dialysis["result"] == "review"
    assert dialysis["evidence"][0]["note"] == (
        f"cannot be read: line {number} of {folder / PROCEDURES} is not valid UTF-8 "
        "(bad bytes replaced)"
    )


def test_a_bad_byte_in_a_code_makes_the_line_unreadable_and_names_its_patient(tmp_path):
    """A replaced byte where the record says what it is (its code) cannot be read at all:
    the line is attributed to the patient its bytes name."""
    folder = cohort(tmp_path)
    number, line = _line_of(folder, PROCEDURES, f"{P80}-7")
    _replace_line(folder, PROCEDURES, number, line.replace(b'"90935"', b'"9093\xff"'))
    output = screened(folder)
    assert changed(output) == {P80: ("excluded", "needs-review")}
    assert listed(output)[P80]["reasons"][-1] == (
        f"unreadable record on line {number} of {folder / PROCEDURES} "
        "(not valid UTF-8 where it says what it is or whose)"
    )


def test_an_unparsable_line_is_attributed_to_the_patient_it_names(tmp_path):
    """Issue 10: an undecodable or unparsable line is attributed to its patient when its
    bytes name one, and that patient (a candidate) needs review."""
    folder = cohort(tmp_path)
    number, line = _line_of(folder, PROCEDURES, f"{P80}-7")
    cut = line[: line.index(b'"performedDateTime"')]  # names its patient, then stops
    _replace_line(folder, PROCEDURES, number, cut)
    output = screened(folder)
    assert changed(output) == {P80: ("excluded", "needs-review")}
    where = f"{folder / PROCEDURES}:{number}"
    found = notes(output)["invalid-json"]["examples"][0]
    assert found["where"] == where
    assert found["message"].endswith(f"; names Patient/{P80}")
    assert listed(output)[P80]["reasons"][-1].startswith(
        f"unreadable record on line {number} of {folder / PROCEDURES} (not JSON ("
    )
    assert "unattributed-record" not in notes(output)


def test_an_unparsable_line_naming_no_patient_means_partial_input(tmp_path, capsys):
    """An unreadable line that names no patient: the input was not all read (exit 4)."""
    folder = cohort(tmp_path)
    number, line = _line_of(folder, PROCEDURES, f"{P80}-7")
    _replace_line(folder, PROCEDURES, number, line[:40])
    state, out = tmp_path / "state", tmp_path / "out"
    code = main(["screen", "--source", str(folder), "--as-of", "2026-06-30", "--out", str(out),
                 "--state", str(state), "--quiet"])  # fmt: skip
    assert code == 4
    err = capsys.readouterr().err
    assert err.startswith("fhir-cohort: warning: partial data: 1 unattributed-record;")
    output = json.loads((out / "candidates.json").read_text())
    assert notes(output)["unattributed-record"]["examples"][0]["where"] == (
        f"{folder / PROCEDURES}:{number}"
    )


# --------------------------------------------------------------------------- limits


def test_an_overlong_line_is_skipped_in_bounded_memory_and_attributed(tmp_path):
    """A line longer than the limit is not read whole: skipped in pieces, noted, and its
    patient (named in the part read) needs review; the next line is read as usual."""
    folder = cohort(tmp_path)
    path = folder / PROCEDURES
    record = {
        "resourceType": "Procedure",
        "id": "huge",
        "subject": {"reference": f"Patient/{P01}"},
        "note": [{"text": "x" * 300_000}],
    }
    path.write_bytes(orjson.dumps(record) + b"\n" + path.read_bytes())
    output = screened(folder, limits=FileLimits(line=64 * 1024))
    assert changed(output) == {P01: ("eligible", "needs-review")}
    assert notes(output)["line-too-long"]["examples"] == [
        {
            "where": f"{path}:1",
            "message": f"longer than 0.0625 MiB (--max-line-mib); names Patient/{P01}",
        }
    ]
    assert listed(output)[P80]["status"] == "excluded"  # the lines after it were read


def test_a_bundle_over_the_limit_is_not_read_and_the_run_is_partial(tmp_path):
    folder = cohort(tmp_path)
    screening = screen([FileSource(folder, limits=FileLimits(bundle=2048))], TRIAL, AS_OF)
    output = screening_dict(screening)
    assert screening.missing_data() == {"unreadable-file": 3}  # all three Bundles are larger
    found = notes(output)["unreadable-file"]["examples"][0]
    assert found["message"] == "the file is more than 0.00195312 MiB (--max-bundle-mib); not read"


def test_a_file_inflating_past_the_limit_stops_there(tmp_path):
    """A decompression bomb is read up to the limit, then noted as a file not read whole."""
    folder = tmp_path / "bomb"
    folder.mkdir()
    line = orjson.dumps({"resourceType": "Basic", "id": "b", "subject": {"reference": "Patient/x"}})
    (folder / "Basic.ndjson.gz").write_bytes(gzip.compress((line + b"\n") * 20_000, mtime=0))
    screening = screen([FileSource(folder, limits=FileLimits(inflated=100_000))], TRIAL, AS_OF)
    assert screening.missing_data() == {"unreadable-file": 1}
    assert screening.funnel.resources_read["Basic"] < 2100  # stopped near the limit
    message = screening.data_quality.examples["unreadable-file"][0]["message"]
    assert message.startswith("the file inflates to more than 0.0953674 MiB (--max-inflated-mib)")


def test_file_limits_are_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["screen", "--as-of", "2026-06-30", "--max-bundle-mib", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        "argument --max-bundle-mib: a size in MiB must be a whole number >= 1, not '0'\n"
    )


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    "reference", [f"https://elsewhere.example/fhir/Patient/{P01}", f"urn:uuid:{P01}"]
)
def test_a_record_for_a_same_id_patient_elsewhere_puts_the_candidate_to_review(tmp_path, reference):
    """Issue 10: references written as absolute URLs or urn:uuid: were merged into the
    local patient of the same id. They are foreign (never evidence here), and a local
    candidate with that id needs review: their record may be incomplete."""

    def edit(files: dict) -> None:
        find(files, f"{P01}-1")["subject"]["reference"] = reference  # p01's SLE Condition

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {P01: ("eligible", "needs-review")}
    assert notes(output)["foreign-reference"]["count"] == 1
    assert listed(output)[P01]["reasons"][-1] == (
        f"Condition/{P01}-1 refers to {reference}, not to this patient, though the id is "
        "the same: it is not counted here, and this patient's record may be incomplete"
    )


@pytest.mark.parametrize("reference", [f"Patient/{P01} ", f"Patient//{P01}", "Patient/"])
def test_a_broken_patient_reference_counts_for_no_one_and_weighs_on_everyone(tmp_path, reference):
    """A reference that is no reference at all ("Patient/", an id with a space) belongs to
    someone here, nobody can say whom: like a record naming no patient, it weighs on every
    candidate (p01's SLE diagnosis could be p21's, whose own is refuted, or p26's, whose
    own is dated after D: they are listed for review), and the patient its id loosely
    names is told their record may be incomplete."""

    def edit(files: dict) -> None:
        find(files, f"{P01}-1")["subject"]["reference"] = reference

    output = screened(cohort(tmp_path, edit))
    possible = {
        p: ("not-a-candidate", "needs-review")
        for p in ("p21-refuted-sle-code", "p26-sle-code-recorded-after-d")
    }
    if reference == "Patient/":  # names nobody: p01 (4 ACR criteria) stays eligible
        assert changed(output) == possible
        return
    assert changed(output) == {**possible, P01: ("eligible", "needs-review")}
    assert listed(output)[P01]["reasons"] == [
        f"Condition/{P01}-1 refers to {reference}, a broken reference that may mean this "
        "patient: it is not counted here, and this patient's record may be incomplete"
    ]
    note = notes(output)["no-patient-reference"]["examples"][0]["message"]
    assert note.startswith(f"its patient reference '{reference}' is not a valid reference;")


def test_a_foreign_record_never_makes_a_non_candidate_eligible(tmp_path):
    """Issue 10: an absolute reference merged an SLE Condition into p17 (3 ACR criteria,
    no SLE code), who became eligible. Foreign, it is nobody's here."""

    def edit(files: dict) -> None:
        sle = copy_of(find(files, f"{P01}-1"), "foreign-sle")
        sle["subject"]["reference"] = f"https://elsewhere.example/fhir/Patient/{P17}"
        files["Condition.000.ndjson"].append(sle)

    output = screened(cohort(tmp_path, edit))
    assert changed(output) == {}


def copy_of(resource: dict, rid: str) -> dict:
    return {**json.loads(json.dumps(resource)), "id": rid}


def test_history_references_resolve_locally(tmp_path):
    def edit(files: dict) -> None:
        find(files, f"{P94}-7")["subject"]["reference"] = f"Patient/{P94}/_history/3"

    assert changed(screened(cohort(tmp_path, edit))) == {}


def test_base_tells_a_file_screen_whose_absolute_references_are_its_own(tmp_path, capsys):
    """``--base URL``: absolute references under the export's own server base resolve."""

    def edit(files: dict) -> None:
        find(files, f"{P94}-7")["subject"]["reference"] = (
            f"https://ehr.example.org/fhir/Patient/{P94}"
        )

    folder = cohort(tmp_path, edit)
    assert changed(screened(folder)) == {P94: ("washout", "needs-review")}
    assert changed(screened(folder, base="https://ehr.example.org/fhir/")) == {}
    out = tmp_path / "out"
    code = main(["screen", "--source", str(folder), "--base", "https://EHR.example.org/fhir",
                 "--as-of", "2026-06-30", "--out", str(out), "--state", str(tmp_path / "s"),
                 "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    output = json.loads((out / "candidates.json").read_text())
    assert listed(output)[P94]["status"] == EXPECTED[P94]["status"] == "washout"


# --------------------------------------------------------------------------- exit codes


def test_invalid_but_read_records_leave_the_run_complete_and_a_baseline(tmp_path, capsys):
    """Exit codes: records that are invalid but read (noted, patients to review) leave the
    run complete: exit 0, recorded complete, the baseline of the next run's diff. A
    --quiet run still says on stderr that some records could not be read."""

    def edit(files: dict) -> None:
        find(files, f"{P94}-7")["status"] = "garbage"

    folder = cohort(tmp_path, edit)
    state, out = tmp_path / "state", tmp_path / "out"
    args = ["screen", "--source", str(folder), "--out", str(out), "--state", str(state), "--quiet"]
    assert main([*args, "--as-of", "2026-06-30"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "fhir-cohort: warning: records that cannot be read for certain: 1 invalid-element; "
        "they never count in a patient's favour (1 listed patient needs review because of "
        "them; see data_quality)\n"
    )
    first = json.loads((out / "candidates.json").read_text())
    assert listed(first)[P94]["status"] == "needs-review"
    assert main([*args, "--as-of", "2026-07-01"]) == 0
    second = json.loads((out / "candidates.json").read_text())
    assert second["changes"]["previous_run"]["as_of"] == "2026-06-30"
