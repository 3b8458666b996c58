"""report.html in a real browser: it renders, the funnel draws, the filter filters,
markup from the data stays text, and nothing is fetched from the network.

One headless Chromium per module (tests/browser.py), driven by selenium; each
report is written with ``write_report`` to a temporary folder and opened as a
file:// URL. Selectors are the page's stable ids and data attributes, never
column positions.
"""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import date
from itertools import pairwise

import orjson
import pytest
from browser import chromium
from builders import SNOMED, D, concept, eligible_core
from conftest import COHORT, EXPECTED

from fhir_cohort.criteria.results import STATUSES
from fhir_cohort.outputs.report import funnel_bars, write_report
from fhir_cohort.pipeline import screen
from fhir_cohort.sources.files import FileSource

ROWS = "#candidates tbody tr[data-status]"

# A patient name and a code display a hostile feed might send: each would set
# window.__pwned if the page ever ran it.
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
HOSTILE_DISPLAY = '<svg onload="window.__pwned=2"></svg><b>malar</b>'


@pytest.fixture(scope="module")
def driver():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def screening(trial):
    as_of = date.fromisoformat(json.loads(EXPECTED.read_text())["as_of"])
    return screen([FileSource(COHORT)], trial, as_of)


@pytest.fixture(scope="module")
def report_url(screening, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(screening, path)
    return path.as_uri()


@pytest.fixture
def page(driver, report_url):
    """The bundled cohort's report, freshly loaded (no filter clicked yet)."""
    load(driver, report_url)
    return driver


@pytest.fixture(scope="module")
def hostile_screening(trial, tmp_path_factory):
    """One otherwise eligible patient whose name and one code display are markup."""
    resources = eligible_core(D)
    resources[0]["name"] = [{"text": HOSTILE_NAME}]
    malar = next(r for r in resources if r.get("id") == "c-malar")
    malar["code"] = concept(SNOMED, "95332009", display=HOSTILE_DISPLAY)
    folder = tmp_path_factory.mktemp("hostile-source")
    (folder / "hostile.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in resources))
    return screen([FileSource(folder)], trial, D)


def open_alert_text(driver) -> str | None:
    """The text of an open alert/confirm/prompt (accepting it), or None when none is open."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return None
    text = alert.text
    alert.accept()
    return text


def load(driver, url: str) -> None:
    """Open ``url``. A dialog the page opens stays open for the tests' alert checks;
    one left open by an earlier test is closed first so it cannot break this one."""
    from selenium.common.exceptions import UnexpectedAlertPresentException

    for _ in range(20):  # accepting one alert lets the page run on to the next
        if open_alert_text(driver) is None:
            break
    with suppress(UnexpectedAlertPresentException):
        driver.get(url)


def remote_fetches(driver) -> list[str]:
    """Every resource the page fetched that was not a file of its own folder.

    Resource Timing lists http(s) fetches, failed ones included; file: loads
    are not listed at all, so anything here came from a network.
    """
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [name for name in names if not name.startswith("file:")]


def visible_statuses(driver) -> list[str]:
    rows = driver.find_elements("css selector", ROWS)
    return [row.get_attribute("data-status") for row in rows if row.is_displayed()]


def click_filter(driver, status: str) -> None:
    driver.find_element("css selector", f'#filters button[data-status="{status}"]').click()


def test_page_renders_with_one_row_per_candidate(page, screening):
    trial, as_of = screening.trial, screening.as_of.isoformat()
    assert trial.id in page.title and as_of in page.title
    assert page.find_element("css selector", "h1").text == trial.title
    rows = page.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => r.textContent)", ROWS
    )
    assert len(rows) == len(screening.candidates) == 115
    for text, candidate in zip(rows, screening.candidates, strict=True):
        assert candidate.result.patient in text


def test_funnel_chart_is_drawn(page, screening):
    svg = page.find_element("css selector", "svg#funnel")
    assert svg.is_displayed()
    box = page.execute_script("return arguments[0].getBoundingClientRect().toJSON()", svg)
    assert box["width"] > 0 and box["height"] > 0

    widths = page.execute_script(
        "return [...arguments[0].querySelectorAll('rect')]"
        ".map(r => r.getBoundingClientRect().width)",
        svg,
    )
    bars = funnel_bars(screening)
    assert len(widths) == len(bars)
    for bar, width in zip(bars, widths, strict=True):
        assert (width > 0) == (bar["count"] > 0), bar
    # the drawn lengths keep the counts' order: a larger count is never a shorter bar
    drawn = sorted(zip((b["count"] for b in bars), widths, strict=True))
    assert all(w1 <= w2 for (_, w1), (_, w2) in pairwise(drawn))
    assert max(widths) == widths[0]  # everyone read is the longest bar

    labels = [t.text for t in svg.find_elements("css selector", "text")]
    assert labels[0] == "patients read"
    assert {bar["label"] for bar in bars} <= set(labels)


def test_filter_by_status_shows_only_that_status_then_all(page, screening):
    washout = [c for c in screening.candidates if c.result.status == "washout"]
    assert washout, "the bundled cohort has washout candidates"

    click_filter(page, "washout")
    assert visible_statuses(page) == ["washout"] * len(washout)
    on = page.find_elements("css selector", "#filters button.on")
    assert [b.get_attribute("data-status") for b in on] == ["washout"]

    click_filter(page, "all")
    assert len(visible_statuses(page)) == len(screening.candidates)


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_filter_matches_the_screening(page, screening, status):
    click_filter(page, status)
    shown = page.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(r => r.getClientRects().length > 0).map(r => r.dataset.status)",
        ROWS,
    )
    assert shown == [c.result.status for c in screening.candidates if c.result.status == status]


def test_markup_in_the_bundled_cohort_is_shown_as_text(page, screening):
    assert open_alert_text(page) is None
    name = "O'Brien <script>alert(1)</script>"
    assert any(c.result.name and name in c.result.name for c in screening.candidates)
    row = page.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        '.find(r => r.textContent.includes("O\'Brien"))',
        ROWS,
    )
    assert row is not None and name in row.text  # .text: what is rendered on screen
    assert page.execute_script("return window.__pwned") is None


def test_markup_in_a_hostile_feed_is_shown_as_text(driver, hostile_screening, tmp_path):
    assert [c.result.name for c in hostile_screening.candidates] == [HOSTILE_NAME]
    path = tmp_path / "report.html"
    write_report(hostile_screening, path)
    load(driver, path.as_uri())

    assert open_alert_text(driver) is None
    assert driver.execute_script("return window.__pwned") is None
    (row,) = driver.find_elements("css selector", ROWS)
    assert HOSTILE_NAME in row.text
    assert "<script>" in row.text
    # the names and displays became text: no element came out of the data
    made = driver.execute_script(
        "return [...document.querySelectorAll('img, [onerror], [onload]')]"
        ".map(e => e.outerHTML.slice(0, 120))"
    )
    assert made == []
    card = driver.find_element("css selector", ".card")
    assert HOSTILE_NAME in card.text and HOSTILE_DISPLAY in card.text
    assert remote_fetches(driver) == []


def test_report_fetches_nothing_from_the_network(page):
    assert remote_fetches(page) == []
    outside = page.execute_script(
        "return [...document.querySelectorAll('[src], link[href], object[data]')]"
        ".map(e => e.outerHTML.slice(0, 120))"
    )
    assert outside == []
    assert page.execute_script("return document.scripts.length") == 1  # the inline filter


def test_the_probes_catch_what_they_look_for(driver, tmp_path):
    """The negative checks above would fail on a page that did the bad things."""
    path = tmp_path / "bad.html"
    path.write_text(
        "<!doctype html><title>bad</title>"
        '<img src="http://127.0.0.1:9/x.png">'
        "<script>window.__pwned = 1; alert('pwned')</script>"
    )
    load(driver, path.as_uri())
    assert open_alert_text(driver) == "pwned"
    assert driver.execute_script("return window.__pwned") == 1
    assert remote_fetches(driver) == ["http://127.0.0.1:9/x.png"]
