"""--site FILE: a site's local codes join the trials' value sets, checked as strictly as a
trial file (README "Local codes").

A SURPASS-2 patient whose HbA1c comes under the hospital's own code: without the site file
the result is read by nobody (hba1c unknown, needs-review); with it, the patient is eligible.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from surpass2_builders import D, eligible, observation, patient, quantity, with_id, write_ndjson

from fhir_cohort.cli import main

LOCAL = "http://hospital.example.org/lab-codes"
SITE = f"""site: St Elsewhere (synthetic)
valuesets:
  lab-hba1c:
    - {{system: "{LOCAL}", code: "A1C-7", display: "HbA1c, whole blood"}}
"""


def local_a1c() -> dict:
    found = observation("a1c", "4548-4", "2026-06-10", valueQuantity=quantity(8.0, "%"))
    found["code"] = {"coding": [{"system": LOCAL, "code": "A1C-7"}]}
    return found


def run(tmp_path: Path, site: str | None) -> tuple[int, dict, str]:
    data = tmp_path / "data"
    write_ndjson(data, with_id([patient(), *eligible(without=("a1c",)), local_a1c()], "s1"))
    args = ["screen", "--trial", "surpass2", "--source", str(data), "--as-of", D]
    args += ["--out", str(tmp_path / "out"), "--state", str(tmp_path / "state"), "--quiet"]
    if site is not None:
        (tmp_path / "site.yaml").write_text(site)
        args += ["--site", str(tmp_path / "site.yaml")]
    code = main(args)
    path = tmp_path / "out" / "candidates.json"
    return code, json.loads(path.read_text()) if path.exists() else {}, str(tmp_path / "site.yaml")


def test_a_local_code_counts_only_with_the_site_file(tmp_path):
    code, output, _ = run(tmp_path / "without", None)
    (candidate,) = output["candidates"]
    assert (code, candidate["status"]) == (0, "needs-review")
    assert candidate["criteria"]["hba1c"]["result"] != "met"
    code, output, _ = run(tmp_path / "with", SITE)
    (candidate,) = output["candidates"]
    assert (code, candidate["status"]) == (0, "eligible")
    hba1c = candidate["criteria"]["hba1c"]
    assert [e["resource"] for e in hba1c["evidence"]] == ["Observation/s1-a1c"]
    assert hba1c["evidence"][0]["code"] == f"{LOCAL}|A1C-7"


@pytest.mark.parametrize(
    ("site", "message"),
    [
        (SITE.replace("code: ", "cod: "), "site.yaml:4: valuesets.lab-hba1c[0].code: required key"),
        (SITE.replace("lab-hba1c", "lab-hbaic"), "site.yaml:3: valuesets.lab-hbaic: no trial "
         "screened reads this value set; did you mean lab-hba1c?"),
        ("valuesets: {lab-hba1c: A1C-7}\n", "site.yaml:1: valuesets.lab-hba1c: "),
        ("valuesets: [\n", "site.yaml:2: not valid YAML"),
    ],
)  # fmt: skip
def test_a_bad_site_file_is_exit_2_naming_line_and_entry(tmp_path, capsys, site, message):
    code, _, _ = run(tmp_path, site)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fhir-cohort: error: ") and message in err, err
    assert not (tmp_path / "out" / "candidates.json").exists()


def test_check_trial_shows_the_site_codes_in_the_value_set(tmp_path, capsys):
    (tmp_path / "site.yaml").write_text(SITE)
    assert main(["check-trial", "surpass2"]) == 0
    without = next(x for x in capsys.readouterr().out.splitlines() if "  lab-hba1c: " in x)
    assert main(["check-trial", "surpass2", "--site", str(tmp_path / "site.yaml")]) == 0
    with_site = next(x for x in capsys.readouterr().out.splitlines() if "  lab-hba1c: " in x)
    count = int(without.split(": ")[1].split(";")[0])
    assert with_site.split(": ")[1].startswith(f"{count + 1};")
