"""report.html in a real browser: it renders, the funnel and the evidence timelines
draw, the changes table lists what changed, the filter filters (and printing shows
every row), markup from the data stays text, and nothing is fetched from the network.

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

from fhir_cohort.changes import Review, compare, snapshot
from fhir_cohort.criteria.results import STATUSES
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.report import funnel_rows, timeline, write_report
from fhir_cohort.sources.files import FileSource

# the two candidate tables: to contact, then already acted on
ROWS = "#candidates tbody tr[data-status], #acted tbody tr[data-status]"

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
    from selenium.webdriver.support.ui import WebDriverWait

    with suppress(UnexpectedAlertPresentException):
        driver.get(url)
        # get() can return before a long page is parsed (CI once counted 61 of 115
        # cards): wait until this document, not the last one, is complete.
        WebDriverWait(driver, 60).until(
            lambda d: (
                d.execute_script("return [document.URL, document.readyState]") == [url, "complete"]
            )
        )


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
    bars = [bar for row in funnel_rows(screening) for bar in row]
    assert len(widths) == len(bars)
    for bar, width in zip(bars, widths, strict=True):
        assert (width > 0) == (bar["count"] > 0), bar
    # the drawn lengths keep the counts' order: a larger count is never a shorter bar
    drawn = sorted(zip((b["count"] for b in bars), widths, strict=True))
    assert all(w1 <= w2 for (_, w1), (_, w2) in pairwise(drawn))
    assert max(widths) == widths[0]  # everyone read is the longest bar

    labels = [t.text for t in svg.find_elements("css selector", "text")]
    assert labels == [f"{bar['label']}: {bar['count']}" for bar in bars]


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
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
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
    # On a loaded machine the page may still be opening its dialog when get() returns:
    # wait for it, so it is accepted here and not left open to abort the next test's load.
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(expected_conditions.alert_is_present())
    assert open_alert_text(driver) == "pwned"
    assert driver.execute_script("return window.__pwned") == 1
    assert remote_fetches(driver) == ["http://127.0.0.1:9/x.png"]


# -- evidence timelines ----------------------------------------------------------------

P113 = "p113-statement-stopped-start-only"  # rituximab last 2026-01-20, washout to 2026-07-20


def test_every_card_draws_its_timeline(page, screening):
    drawn = page.execute_script(
        """return [...document.querySelectorAll('.card')].map(card => {
             const svgs = card.querySelectorAll('svg.timeline');
             const box = svgs[0].getBoundingClientRect();
             return {patient: card.querySelector('h3 small').textContent,
                     svgs: svgs.length, width: box.width, height: box.height,
                     circles: svgs[0].querySelectorAll('circle').length,
                     washouts: svgs[0].querySelectorAll('rect.washout').length};
           })"""
    )
    assert len(drawn) == len(screening.candidates) == 115
    for card, c in zip(drawn, screening.candidates, strict=True):
        assert card["patient"] == f"({c.result.patient})"
        assert card["svgs"] == 1 and card["width"] > 0 and card["height"] > 0, card
        lanes = timeline(c, screening.as_of, screening.trial)["lanes"]
        assert card["circles"] == sum(len(lane["points"]) for lane in lanes), card
        assert card["washouts"] == sum(b["washout"] for lane in lanes for b in lane["bars"])
    assert sum(card["washouts"] for card in drawn) >= 15


def timeline_geometry(driver, patient: str) -> dict:
    """Screen positions in one card's timeline: the washout bars, the as-of and
    eligible-from lines (by their documented colours) and the tick labels' centres."""
    return driver.execute_script(
        """const card = [...document.querySelectorAll('.card')]
             .find(c => c.querySelector('h3 small').textContent === '(' + arguments[0] + ')');
           const svg = card.querySelector('svg.timeline');
           card.scrollIntoView();
           const box = e => e.getBoundingClientRect().toJSON();
           const line = colour => svg.querySelector('line[stroke="' + colour + '"]');
           return {
             svg: box(svg),
             washouts: [...svg.querySelectorAll('rect.washout')].map(r => (
               {...box(r), title: r.querySelector('title').textContent})),
             as_of: box(line('#9b1c1c')),
             eligible: box(line('#0a6b2b')),
             ticks: Object.fromEntries([...svg.querySelectorAll('text')]
               .filter(t => !t.classList.contains('lane-label'))
               .map(t => { const b = t.getBoundingClientRect();
                           return [t.textContent, (b.left + b.right) / 2]; })),
           };""",
        patient,
    )


def test_washout_bar_ends_on_the_eligible_tick_right_of_as_of(page, screening):
    geometry = timeline_geometry(page, P113)
    (bar,) = geometry["washouts"]
    assert bar["title"] == "Other biologics in the last 6 months until 2026-07-20"
    assert bar["width"] > 0 and bar["height"] > 0
    eligible = geometry["eligible"]["left"]
    as_of = geometry["as_of"]["left"]
    assert abs(bar["right"] - eligible) <= 1
    assert abs(bar["right"] - geometry["ticks"]["eligible 2026-07-20"]) <= 2
    assert abs(as_of - geometry["ticks"][f"as of {screening.as_of.isoformat()}"]) <= 2
    # the bar starts at the last exposure, months before as-of, and runs past it
    assert bar["left"] < as_of < bar["right"]
    svg = geometry["svg"]
    assert svg["left"] < bar["left"] and bar["right"] <= svg["right"]


def test_timeline_labels_are_not_cut_off(page):
    cut = page.execute_script(
        """return [...document.querySelectorAll('svg.timeline')].flatMap(svg => {
             const s = svg.getBoundingClientRect();
             return [...svg.querySelectorAll('text')]
               .filter(t => { const b = t.getBoundingClientRect();
                              return b.left < s.left - 0.5 || b.right > s.right + 0.5; })
               .map(t => t.textContent);
           })"""
    )
    assert cut == []


# -- what changed, review decisions ----------------------------------------------------

LATER = date(2026, 7, 22)
REVIEWER = "Dr. Ada Okafor"
HOSTILE_REVIEWER = '<img src=x onerror="window.__pwned=3">Eve'
P74 = "p74-activity-after-d"  # needs-review at as-of; its July labs make it eligible


@pytest.fixture(scope="module")
def changes_report(screening, trial, tmp_path_factory):
    """The bundled cohort screened again three weeks on, compared with the run at as-of;
    p113 declined with nothing new since, p74 declined (by a hostile name) before its
    July labs appeared."""
    later = screen([FileSource(COHORT)], trial, LATER)
    before = {c.result.patient: snapshot(c) for c in screening.candidates}
    now = {c.result.patient: snapshot(c) for c in later.candidates}
    at = "2026-07-01T09:30:00+00:00"
    reviews = {
        P113: Review(P113, "declined", "", REVIEWER, at, frozenset(now[P113]["evidence"])),
        P74: Review(P74, "declined", "", HOSTILE_REVIEWER, at, frozenset(before[P74]["evidence"])),
    }
    run = {"id": 1, "as_of": "2026-06-30", "finished_at": "2026-06-30T18:05:00+00:00"}
    changes = compare(before, now, reviews, LATER, run, later.trial.label)
    path = tmp_path_factory.mktemp("changes") / "report.html"
    write_report(later, path, changes)
    return later, changes, path.as_uri()


@pytest.fixture
def changes_page(driver, changes_report):
    load(driver, changes_report[2])
    return driver


CHANGE_ROWS = "#changes tbody tr[data-change]"


def test_changes_table_lists_every_change(changes_page, changes_report):
    _, changes, _ = changes_report
    rows = changes_page.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => ("
        "{kind: r.dataset.change, text: r.innerText, shown: r.getClientRects().length > 0}))",
        CHANGE_ROWS,
    )
    expected = [
        (kind, c.patient)
        for kind, items in (
            ("new", changes.new),
            ("reconsider", changes.reconsider),
            ("changed", changes.status_changed),
            ("dropped", changes.dropped),
            ("soon", changes.eligible_soon),
        )
        for c in items
    ]
    assert len(rows) == len(expected) == 14  # 1 new, 1 reconsider, 5 changed, 1 dropped, 6 soon
    for row, (kind, patient) in zip(rows, expected, strict=True):
        assert row["kind"] == kind and patient in row["text"] and row["shown"], row
    by_patient = {(row["kind"], p): row["text"] for row, (_, p) in zip(rows, expected, strict=True)}
    assert "washout → eligible" in by_patient[("changed", P113)]
    assert (
        "Age 18–65: 66 outside the trial's range"
        in by_patient[("dropped", "p05-age-65-day-before-66th")]
    )
    assert "washout until 2026-07-25" in by_patient[("soon", "p114-last-exposure-counts")]
    reconsider = by_patient[("reconsider", P74)]
    assert f"declined 2026-07-01 by {HOSTILE_REVIEWER}; new evidence since: " in reconsider
    summary = changes_page.find_element("css selector", "#changes p").text
    assert summary.startswith("Compared with the run of 2026-06-30T18:05:00+00:00")


def test_status_filter_works_with_the_review_and_change_columns(changes_page, changes_report):
    later, _, _ = changes_report
    headers = [th.text for th in changes_page.find_elements("css selector", "#candidates th")]
    assert headers[-2:] == ["review", "since last run"]

    click_filter(changes_page, "eligible")
    shown = changes_page.execute_script(
        """return [...document.querySelectorAll(arguments[0])]
             .filter(r => r.getClientRects().length > 0)
             .map(r => ({status: r.dataset.status, patient: r.querySelector('small').textContent,
                         cells: r.cells.length, review: r.querySelector('td.review').innerText,
                         since: r.cells[r.cells.length - 1].innerText}))""",
        ROWS,
    )
    eligible = [c.result.patient for c in later.candidates if c.result.status == "eligible"]
    # the declined patient without new evidence has left the order: listed after the rest
    assert [row["patient"] for row in shown] == [p for p in eligible if p != P113] + [P113]
    assert {row["status"] for row in shown} == {"eligible"}
    assert {row["cells"] for row in shown} == {len(headers)}
    p113 = next(row for row in shown if row["patient"] == P113)
    assert (p113["review"], p113["since"]) == (f"declined 2026-07-01 by {REVIEWER}", "changed")
    p74 = next(row for row in shown if row["patient"] == P74)
    assert p74["review"].startswith(f"declined 2026-07-01 by {HOSTILE_REVIEWER}; new evidence")
    assert p74["since"] == "new evidence since review"
    assert {row["review"] for row in shown if row["patient"] not in (P113, P74)} == {"not reviewed"}
    # the filter leaves the changes table alone
    hidden = changes_page.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(r => r.getClientRects().length === 0).length",
        CHANGE_ROWS,
    )
    assert hidden == 0

    click_filter(changes_page, "all")
    assert len(visible_statuses(changes_page)) == len(later.candidates)


def test_review_by_a_hostile_name_is_shown_as_text(changes_page):
    assert open_alert_text(changes_page) is None
    assert changes_page.execute_script("return window.__pwned") is None
    made = changes_page.execute_script(
        "return [...document.querySelectorAll('img, [onerror]')].map(e => e.outerHTML)"
    )
    assert made == []
    card = changes_page.execute_script(
        "return [...document.querySelectorAll('.card')]"
        ".find(c => c.querySelector('h3 small').textContent === arguments[0]).innerText",
        f"({P74})",
    )
    assert f"Review: declined 2026-07-01 by {HOSTILE_REVIEWER}; new evidence since: " in card
    assert remote_fetches(changes_page) == []


# -- printing --------------------------------------------------------------------------


@pytest.fixture
def print_media(driver):
    """Lays pages out for print (as in the print preview) while the test runs."""

    def emulate(media: str) -> None:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": media})

    try:
        yield emulate
    finally:
        emulate("")


def test_printing_hides_the_filters_and_shows_every_row(changes_page, changes_report, print_media):
    later, _, _ = changes_report
    washout = sum(c.result.status == "washout" for c in later.candidates)
    click_filter(changes_page, "washout")
    assert len(visible_statuses(changes_page)) == washout < len(later.candidates)
    assert changes_page.find_element("css selector", "#filters").is_displayed()

    print_media("print")
    assert changes_page.execute_script("return matchMedia('print').matches") is True
    state = changes_page.execute_script(
        """const shown = e => e.getClientRects().length > 0;
           const rows = [...document.querySelectorAll(arguments[0])];
           return {filters: getComputedStyle(document.getElementById('filters')).display,
                   buttons: [...document.querySelectorAll('#filters button')].filter(shown).length,
                   rows: rows.length, shown: rows.filter(shown).length,
                   still_marked: rows.filter(r => r.classList.contains('hidden')).length,
                   changes: [...document.querySelectorAll(arguments[1])]
                     .filter(r => !shown(r)).length,
                   timelines: [...document.querySelectorAll('svg.timeline')]
                     .filter(s => s.getBoundingClientRect().width > 0).length};""",
        ROWS,
        CHANGE_ROWS,
    )
    assert state["filters"] == "none" and state["buttons"] == 0
    assert state["rows"] == state["shown"] == len(later.candidates)
    assert state["still_marked"] == len(later.candidates) - washout  # the filter is still on
    assert state["changes"] == 0
    assert state["timelines"] == len(later.candidates)

    print_media("")
    assert len(visible_statuses(changes_page)) == washout  # on screen the filter applies again


# -- size: a page a coordinator can read on a desktop and on a phone ---------------------


@pytest.fixture
def window(driver):
    """Sets the browser window's size for one test, then puts the default back."""
    default = driver.get_window_size()
    try:
        yield lambda width, height: driver.set_window_size(width, height)
    finally:
        driver.set_window_size(default["width"], default["height"])


def page_size(driver) -> dict:
    return driver.execute_script(
        "const d = document.documentElement;"
        "return {height: d.scrollHeight, width: d.scrollWidth, inner: d.clientWidth};"
    )


def test_the_bundled_report_is_under_25000_px_tall_at_1400_px(driver, report_url, window):
    window(1400, 1000)
    load(driver, report_url)
    size = page_size(driver)
    assert size["inner"] > 1300  # laid out at the desktop width
    assert size["height"] < 25_000, size
    assert size["width"] <= size["inner"]
    # the folds are what keeps it short: not-met rows and evidence are in closed <details>
    folded = driver.execute_script(
        "return [...document.querySelectorAll('.card details')].filter(d => !d.open).length"
    )
    assert folded >= len(driver.find_elements("css selector", ".card"))


def test_the_bundled_report_reads_at_390_px_without_sideways_scrolling(driver, report_url, window):
    window(390, 844)
    load(driver, report_url)
    viewport = driver.find_element("css selector", 'meta[name="viewport"]')
    assert "width=device-width" in viewport.get_attribute("content")
    size = page_size(driver)
    assert size["inner"] <= 390
    assert size["width"] <= size["inner"], size
    # the funnel and an opened timeline shrink to the screen rather than overflow
    driver.execute_script("document.querySelector('.card details.evidence-box').open = true")
    widths = driver.execute_script(
        "return [...document.querySelectorAll('svg#funnel, .card svg.timeline')]"
        ".filter(s => s.getClientRects().length).map(s => s.getBoundingClientRect().right)"
    )
    assert len(widths) >= 2 and max(widths) <= size["inner"]
    assert page_size(driver)["width"] <= size["inner"]
