"""Bulk ``$export`` on the real servers of the tests, the bundled cohort on each.

sekmet-fhir is the one with ``$export``: at system and Group level its screen
must equal the file screen patient by patient and exit 0, and the next run
builds on it with ``_since`` and gives the same answer (Patient level:
``test_server_integration`` and ``test_real_servers_screen``). On a second
sekmet from which the separate rituximab Medication was deleted (finding 6 on
a real server), only the patient whose record references it is needs-review,
with the reason, and the run exits 4. Medplum's router and fhirsnake have no
``$export`` at any level: one line, exit 3, nothing written. These are the
Bulk rows of the compatibility table in ``docs/servers.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import requests
from candidate_diff import diff, rule_breaches
from real_servers import SERVERS, seed_cohort

from fhir_cohort.cli import main

AS_OF = "2026-06-30"
GROUP = "fhir-cohort-everyone"
RITUXIMAB = "med-rituximab"
WASHOUT_BY_MEDICATION = "p104-medication-reference"


def screen(base: str, folder: Path, *extra: str) -> tuple[int, dict | None]:
    out = folder / "out"
    command = ["screen", "--server", base, "--as-of", AS_OF, "--quiet"]
    code = main([*command, "--state", str(folder / "state"), "--out", str(out), *extra])
    written = out / "candidates.json"
    return code, json.loads(written.read_text()) if written.exists() else None


def run_summary(base: str, folder: Path, level: str) -> str:
    """What a third run prints (its summary says which kind of pull it was)."""
    out = folder / "summary"
    command = ["screen", "--server", base, "--as-of", AS_OF, "--bulk", level, "--out", str(out)]
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        assert main([*command, "--state", str(folder / "state")]) == 0
    return captured.getvalue()


def everyone_group(base: str) -> None:
    """A Group of every Patient on the server (the cohort has none of its own)."""
    answer = requests.get(f"{base}/Patient", params={"_elements": "id", "_count": "1000"}).json()
    members = [e["resource"]["id"] for e in answer.get("entry", [])]
    group = {
        "resourceType": "Group",
        "id": GROUP,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members],
    }
    headers = {"Content-Type": "application/fhir+json"}
    assert requests.put(f"{base}/Group/{GROUP}", json=group, headers=headers).ok
    assert len(members) == 120  # every patient of the bundled cohort


@pytest.mark.parametrize("level", ["system", f"group:{GROUP}"])  # patient: test_server_integration
@pytest.mark.parametrize("cohort_server", ["sekmet"], indirect=True)
def test_sekmet_bulk_equals_the_file_screen_and_builds_on_it(
    cohort_server, cohort_output, tmp_path, level, capsys
):
    if level.startswith("group:"):
        everyone_group(cohort_server.base)
    code, output = screen(cohort_server.base, tmp_path, "--bulk", level)
    assert rule_breaches(cohort_output, output, code) == []
    assert (code, diff(cohort_output, output)) == (0, [])
    partial = {"missing-data", "missing-record", "export-error"}
    assert [q["code"] for q in output["data_quality"] if q["code"] in partial] == []
    (folder,) = (tmp_path / "state" / "bulk").iterdir()
    first = json.loads((folder / ".bulk-state.json").read_text())
    assert set(first) == {"baseline"}  # the job was settled
    # The next run exports only what changed since, and gives the same answer.
    code, output = screen(cohort_server.base, tmp_path, "--bulk", level, "--max-retries", "0")
    assert (code, diff(cohort_output, output)) == (0, [])
    second = json.loads((folder / ".bulk-state.json").read_text())["baseline"]
    assert second["transactionTime"] > first["baseline"]["transactionTime"]
    capsys.readouterr()
    assert "pull: incremental: resources changed since" in run_summary(
        cohort_server.base, tmp_path, level
    )
    told = capsys.readouterr().err
    assert "resuming" not in told and "did not release" not in told  # DELETE answered 2xx


@pytest.fixture(scope="module")
def sekmet_without_rituximab(tmp_path_factory):
    """A sekmet holding the cohort but for the Medication one patient's record references."""
    with SERVERS["sekmet"](tmp_path_factory.mktemp("sekmet-no-med")) as base:
        seed_cohort(base)
        assert requests.delete(f"{base}/Medication/{RITUXIMAB}").ok
        assert requests.get(f"{base}/Medication/{RITUXIMAB}").status_code in (404, 410)
        yield base


@pytest.mark.parametrize("level", ["system", "patient"])
def test_sekmet_medication_gone_is_review_for_its_patient_only(
    sekmet_without_rituximab, cohort_output, tmp_path, level
):
    """Finding 6 on a real server: before, a Medication neither exported nor readable
    failed the whole run (exit 3)."""
    code, output = screen(sekmet_without_rituximab, tmp_path, "--bulk", level)
    assert code == 4
    assert rule_breaches(cohort_output, output, code) == []
    assert [(d.patient, d.other.status) for d in diff(cohort_output, output)] == [
        (WASHOUT_BY_MEDICATION, "needs-review")
    ]
    (patient,) = [c for c in output["candidates"] if c["patient"] == WASHOUT_BY_MEDICATION]
    assert any(f"Medication/{RITUXIMAB}" in r for r in patient["reasons"])


@pytest.mark.parametrize("level", ["system", "patient", f"group:{GROUP}"])
@pytest.mark.parametrize("cohort_server", ["medplum", "fhirsnake"], indirect=True)
def test_no_export_at_any_level_is_one_line(cohort_server, tmp_path, capsys, level):
    code, output = screen(cohort_server.base, tmp_path, "--bulk", level)
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, output) == (3, None)
    assert len(err) == 1 and "$export" in err[0]
