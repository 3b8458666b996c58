"""The outputs a coordinator reads (report.html, candidates.csv, the terminal) for issue
13 part 7: patients already acted on leave the "to contact" order; people read the
trial's labels, never internal keys; values print their units and reference ranges
plainly; a needs-review row says why; the terminal prints whole patient ids.

Everything runs over the bundled synthetic cohort (fixtures/misle-cohort), with review
decisions built as ``fhir-cohort review`` records them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import date

import pytest
from conftest import COHORT, EXPECTED
from test_report import candidate_rows, cards, snapshots, text

from fhir_cohort.changes import compare
from fhir_cohort.criteria.results import STATUSES
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import ACTED_ON, csv_bytes, reasons
from fhir_cohort.outputs.report import render
from fhir_cohort.outputs.terminal import TOP, summary
from fhir_cohort.reviews import REVIEW_STATUSES, Review
from fhir_cohort.sources.files import FileSource

AT = "2026-07-01T09:30:00+00:00"


@pytest.fixture(scope="module")
def screening(trial):
    as_of = date.fromisoformat(json.loads(EXPECTED.read_text())["as_of"])
    return screen([FileSource(COHORT)], trial, as_of)


def decided(screening, decisions: dict[str, str]):
    """The changes of a second look at the same run, with these latest decisions (the
    evidence then on record all seen, so nothing is new since)."""
    now = snapshots(screening)
    reviews = {
        p: Review(p, status, "", "A. Rivera", AT, frozenset(now[p]["evidence"]))
        for p, status in decisions.items()
    }
    return compare(now, now, reviews, screening.as_of, {"id": 1, "as_of": "x", "finished_at": "y"})


def csv_ids(screening, changes) -> list[str]:
    rows = csv.DictReader(io.StringIO(csv_bytes(screening, changes).decode()))
    return [row["record_id"] for row in rows]


def terminal_ids(screening, changes) -> list[str]:
    """The patient ids of the terminal's top list, in order."""
    lines = summary(screening, changes=changes).splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "patient"])
    ids = []
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) < 3 or not parts[0].isdigit() or parts[2] not in STATUSES:
            break
        ids.append(parts[1])
    return ids


def test_every_decision_but_reopened_acts_on_the_case():
    assert frozenset(REVIEW_STATUSES) - {"reopened"} == ACTED_ON
    assert {"declined", "not-eligible", "contacted", "scheduled", "screened", "enrolled"} <= (
        ACTED_ON
    ) and "deferred" in ACTED_ON


@pytest.mark.parametrize("status", sorted(ACTED_ON))
def test_a_patient_acted_on_leaves_the_order_of_report_csv_and_terminal(screening, status):
    ranked = [c.result.patient for c in screening.candidates]
    first, second = ranked[:2]
    changes = decided(screening, {first: status})
    rest = [p for p in ranked if p != first]

    page = render(screening, changes)
    rows = candidate_rows(page)
    assert [p for p, row in rows.items() if row["table"] == "candidates"] == rest
    assert [p for p, row in rows.items() if row["table"] == "acted"] == [first]
    assert "Already acted on (1)" in page and "Candidates to contact (114)" in page
    assert list(cards(page)) == [*rest, first]  # the cards follow the same order
    assert f"already acted on: {status}" in text(cards(page)[first])
    assert rows[first]["review"].startswith(f"{status} 2026-07-01 by A. Rivera")

    assert csv_ids(screening, changes) == [*rest, first]
    assert terminal_ids(screening, changes) == rest[:TOP]
    assert terminal_ids(screening, changes)[0] == second
    assert "  1 already acted on" in summary(screening, changes=changes)


def test_reopened_puts_the_patient_back_in_rank_order(screening):
    ranked = [c.result.patient for c in screening.candidates]
    changes = decided(screening, {ranked[0]: "reopened"})
    rows = candidate_rows(render(screening, changes))
    assert list(rows) == ranked and {row["table"] for row in rows.values()} == {"candidates"}
    assert csv_ids(screening, changes) == ranked
    assert terminal_ids(screening, changes) == ranked[:TOP]


def test_without_decisions_every_output_keeps_the_rank_order(screening):
    ranked = [c.result.patient for c in screening.candidates]
    page = render(screening)
    assert list(candidate_rows(page)) == ranked and 'id="acted"' not in page
    assert csv_ids(screening, None) == ranked
    assert terminal_ids(screening, None) == ranked[:TOP]
    assert "already acted on" not in summary(screening)


def visible_text(page: str) -> str:
    """The page's text as a person reads it (no script, no style)."""
    body = page.split("<body>", 1)[1].split("<script>", 1)[0]
    return text(body)


def internal_keys(screening) -> set[str]:
    """The trial's ids that are not words: every inclusion, exclusion and sub-rule id
    with an underscore (one-word ids such as "hiv" read as words in any case)."""
    spec = screening.trial.spec
    keys = {*spec.inclusions, *spec.exclusions, *spec.labels}
    return {k for k in keys if "_" in k}


def test_people_read_labels_never_internal_keys(screening):
    keys = internal_keys(screening)
    assert {"belimumab_washout", "biologic_washout", "cns_lupus", "malar_rash"} <= keys
    shown = visible_text(render(screening))
    assert [k for k in keys if k in shown] == []
    assert "met (0)" not in shown
    label = screening.trial.label
    washout = next(c for c in screening.candidates if c.result.status == "washout").result
    key, finding = next((k, f) for k, f in washout.exclusions.items() if f.until)
    assert f"{label(key)} until {finding.until.isoformat()}" in shown
    assert f"No exclusion found: {label('cns_lupus')}, {label('dialysis')}" in shown

    table = csv_bytes(screening).decode()
    for column in ("exclusions_flagged", "to_verify", "inclusions_open"):
        cells = [row[column] for row in csv.DictReader(io.StringIO(table))]
        assert [k for k in keys if any(k in cell for cell in cells)] == [], column
    terminal = summary(screening)
    assert [k for k in keys if k in terminal] == []


def test_values_print_units_and_reference_ranges_plainly(screening):
    shown = visible_text(render(screening))
    assert "reference –" not in shown and "reference -" not in shown
    assert "[degF]" not in shown and "[IU]" not in shown
    assert "101.3 °F" in shown  # p49's fever, sent as [degF]
    assert "85 IU/mL (reference: up to 30 IU/mL)" in shown  # anti-dsDNA, sent as "–30"
    assert "70 mg/dL (reference: 90 mg/dL to 180 mg/dL)" in shown  # C3


def test_every_needs_review_row_says_why(screening):
    trial = screening.trial
    rows = candidate_rows(render(screening))
    table = csv_bytes(screening).decode()
    in_csv = {r["record_id"]: r["needs_review_because"] for r in csv.DictReader(io.StringIO(table))}
    review = [c for c in screening.candidates if c.result.status == "needs-review"]
    assert len(review) >= 30
    for c in review:
        why = reasons(c, trial)
        assert why and len(why) == len(c.result.reasons), c.result.patient
        assert rows[c.result.patient]["reason"] == text("; ".join(why))
        assert in_csv[c.result.patient] == "; ".join(why)
    # an exclusion to review is named by its label, its evidence read plainly
    p77 = reasons(next(c for c in review if c.result.patient == "p77-cns-resolved"), trial)
    assert p77[0].startswith("Active CNS lupus needs review: Condition/p77-cns-resolved")


def test_the_terminal_prints_whole_patient_ids(screening):
    long_id = "p01-eligible-baseline-" + "x" * 40 + "-end"
    first = screening.candidates[0]
    renamed = replace(first, result=replace(first.result, patient=long_id))
    shown = replace(screening, candidates=[renamed, *screening.candidates[1:]])
    out = summary(shown)
    assert (
        long_id
        in out.splitlines()[
            next(i for i, line in enumerate(out.splitlines()) if long_id[:20] in line)
        ]
    )
    assert terminal_ids(shown, None)[0] == long_id


def test_when_everyone_is_acted_on_the_terminal_lists_nobody_to_contact(screening):
    everyone = {c.result.patient: "contacted" for c in screening.candidates}
    changes = decided(screening, everyone)
    assert terminal_ids(screening, changes) == []
    assert f"  {len(everyone)} already acted on" in summary(screening, changes=changes)
    rows = candidate_rows(render(screening, changes))
    assert {row["table"] for row in rows.values()} == {"acted"}
