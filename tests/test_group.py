"""group.json is a valid R4 Group (fhir.resources' R4B model, the reference the screen
no longer imports on every run): one member per listed candidate, with its status."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
from fhir.resources.R4B.group import Group

from fhir_cohort.changes import LISTED
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.group import STATUS_EXTENSION, build_group, group_json
from fhir_cohort.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[1]


def test_group_json_is_a_valid_r4_group_of_the_listed(trial):
    screening = screen([FileSource(ROOT / "fixtures" / "misle-cohort")], trial, date(2026, 6, 30))
    written = orjson.loads(group_json(build_group(screening)))
    model = Group.model_validate(written)
    # what the model reads back is what was written, nothing dropped or coerced
    assert orjson.loads(model.model_dump_json(exclude_none=True)) == written
    listed = {c.result.patient: c.result.status for c in screening.candidates}
    listed = {p: s for p, s in listed.items() if s in LISTED}
    assert written["quantity"] == len(listed) > 0
    members = {
        m["entity"]["reference"].removeprefix("Patient/"): m["extension"][0]["valueCode"]
        for m in written["member"]
        if m["extension"][0]["url"] == STATUS_EXTENSION
    }
    assert members == listed


def test_an_empty_group_has_no_member_array(trial, tmp_path):
    (tmp_path / "empty.ndjson").write_text("")
    screening = screen([FileSource(tmp_path)], trial, date(2026, 6, 30))
    written = orjson.loads(group_json(build_group(screening)))
    Group.model_validate(written)
    assert written["quantity"] == 0 and "member" not in written
