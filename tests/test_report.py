"""report.html: self-contained, escaped, with the funnel chart and a card per candidate."""

from __future__ import annotations

import re

import pytest
from conftest import COHORT, EXPECTED

from fhir_cohort.outputs.report import funnel_bars, render
from fhir_cohort.pipeline import screen
from fhir_cohort.sources.files import FileSource


@pytest.fixture(scope="module")
def screening(trial):
    import json
    from datetime import date

    as_of = date.fromisoformat(json.loads(EXPECTED.read_text())["as_of"])
    return screen([FileSource(COHORT)], trial, as_of)


def test_markup_from_the_data_is_shown_as_text(screening):
    html = render(screening)
    assert "<script>alert(1)</script>" not in html
    assert "O&#39;Brien &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert len(re.findall(r"<script>", html)) == 1  # only the page's own filter script


def test_report_is_self_contained(screening):
    html = render(screening)
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert "@import" not in html


def test_funnel_chart_and_one_card_per_candidate(screening):
    html = render(screening)
    bars = funnel_bars(screening)
    assert bars[0]["label"] == "patients read" and bars[0]["count"] == 120
    assert {k: v for k, v in bars[-5].items() if k in ("label", "count")} == {
        "label": "eligible",
        "count": 55,
    }
    assert html.count("<rect x=") == len(bars)
    assert html.count('class="card"') == len(screening.candidates) == 115
    first = screening.candidates[0].result
    assert 'id="p-1"' in html and first.patient in html
