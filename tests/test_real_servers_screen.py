"""End to end on each real server: the bundled cohort, screened from the server and from files.

Each server (``real_servers.cohort_server``: sekmet-fhir, Medplum's router,
fhirsnake) holds the bundled cohort, put there by ``fhir-cohort seed``. A
screen of it (``fhir-cohort screen --server URL --as-of 2026-06-30``, by REST
search, and by Bulk ``$export`` where the server offers it) is compared
patient by patient with the screen of ``fixtures/misle-cohort`` from files
(``candidate_diff``), and must keep the project's rule: every patient judged
exactly as from files, or listed as needs-review with a reason and the run
exiting 4; never eligible or in washout when the files say otherwise; exit 0
only when the lists are identical.

Where a server's screen breaks the rule, the test is a strict xfail whose
reason says what goes wrong, and it is expected only if it breaks it exactly as
recorded in ``TODAY`` (exit code; patients right, sent to review, wrong): a
fix flips it to XPASS, a failure to remove the mark; a change that breaks it
another way fails with the new numbers. ``docs/servers.md`` records the same
numbers. ``probe`` on each server must print the plan the screen follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from candidate_diff import Outcome, RuleBroken, outcome, rule_breaches
from real_servers import RealServer

from fhir_cohort.cli import main

AS_OF = "2026-06-30"
LISTED = 115  # patients the file screen lists (120 less 5 not-a-candidate)

# How each server's screen breaks the rule today (a key absent: it keeps the rule). Issue 9
# emptied it: Medplum's router (typed references only, _include ignored, no next links) and
# fhirsnake (every search parameter but a single _id ignored, POST _search refused) now give
# the file screen's answer.
TODAY: dict[tuple[str, str], Outcome] = {}


@dataclass(frozen=True)
class Run:
    exit_code: int
    output: dict | None  # candidates.json, when the run wrote one


def screen(base: str, folder: Path, *extra: str) -> Run:
    out = folder / "out"
    command = ["screen", "--server", base, "--as-of", AS_OF, "--quiet"]
    command += ["--state", str(folder / "state"), "--out", str(out), *extra]
    code = main(command)
    written = out / "candidates.json"
    return Run(code, json.loads(written.read_text()) if written.exists() else None)


def check_rule(server: RealServer, mode: str, reference: dict, run: Run) -> None:
    breaches = rule_breaches(reference, run.output, run.exit_code)
    if not breaches:
        return
    found = outcome(reference, run.output, run.exit_code)
    shown = "\n".join(breaches[:8]) + (
        f"\n(+{len(breaches) - 8} more)" if len(breaches) > 8 else ""
    )
    if TODAY.get((server.name, mode)) == found:
        raise RuleBroken(f"{server.name} {mode}: {found}\n{shown}")
    raise AssertionError(
        f"{server.name} {mode} breaks the rule, not as recorded in TODAY "
        f"({TODAY.get((server.name, mode))}): {found}\n{shown}"
    )


@pytest.mark.parametrize("cohort_server", ["sekmet", "medplum", "fhirsnake"], indirect=True)
def test_rest_screen_keeps_the_rule(cohort_server, cohort_output, tmp_path):
    """Findings 1, 2 and 4 on real servers: before issue 9, Medplum's screen judged all 115
    patients wrong with exit 0 (bare ids in patient=), and fhirsnake's stopped with exit 3
    (POST _search refused)."""
    check_rule(cohort_server, "rest", cohort_output, screen(cohort_server.base, tmp_path))


@pytest.mark.parametrize("level", ["system", "patient"])
@pytest.mark.parametrize("cohort_server", ["sekmet"], indirect=True)
def test_bulk_screen_keeps_the_rule(cohort_server, cohort_output, tmp_path, level):
    run = screen(cohort_server.base, tmp_path, "--bulk", level)
    check_rule(cohort_server, f"bulk {level}", cohort_output, run)


@pytest.mark.parametrize("level", ["system", "patient"])
@pytest.mark.parametrize("cohort_server", ["medplum", "fhirsnake"], indirect=True)
def test_bulk_without_export_stops_in_one_line(cohort_server, tmp_path, capsys, level):
    """Neither Medplum's router nor fhirsnake has $export: the run says so and writes nothing."""
    run = screen(cohort_server.base, tmp_path, "--bulk", level)
    err = capsys.readouterr().err.strip().splitlines()
    assert (run.exit_code, run.output) == (3, None)
    assert len(err) == 1 and "$export" in err[0]


# What probe must say on each server (finding 9: before, it called Medplum's bare-id fetch
# fine and fhirsnake's ignored code filter "answered, total 361"), besides the plan.
PROBE_SAYS = {
    "sekmet": ["[ok  ] search by code", "[ok  ] patients as patient=a,b", "[ok  ] _include"],
    "medplum": [
        "[FAIL] patients as patient=a,b",
        "[ok  ] patients as patient=Patient/a,Patient/b",
        "no next link; _offset brings the next ones",
        "[FAIL] _include",
    ],
    "fhirsnake": [
        "[FAIL] CapabilityStatement: GET metadata -> not a CapabilityStatement (a Bundle)",
        "[FAIL] search by code",
        "[FAIL] POST _search",
        "the parameter is ignored",
        "[FAIL] several ids",
        "[FAIL] _lastUpdated",
    ],
}


@pytest.mark.parametrize("cohort_server", ["sekmet", "medplum", "fhirsnake"], indirect=True)
def test_probe_prints_the_plan_the_screen_follows(cohort_server, tmp_path, capsys):
    """Finding 9: probe checks answers, not that there was one, and prints the plan that
    ``screen`` then records in candidates.json (``retrieval.plan``)."""
    code = main(["probe", "--server", cohort_server.base])
    printed = capsys.readouterr().out
    plan = screen(cohort_server.base, tmp_path).output["retrieval"]["plan"]
    assert code == 0, printed
    for said in PROBE_SAYS[cohort_server.name]:
        assert said in printed
    assert f"patients named as: {plan['patients']}" in printed
    post = "POST Type/_search" if plan["post_search"] else "GET, in chunks that fit a URL"
    assert f"long code lists: {post}" in printed
    several = "_id=a,b" if plan["several_ids"] else "one read per id (Type/id)"
    assert f"Patients and Medications by id: {several}" in printed
