"""The workbench in a real browser: Debian's Chromium (tests/browser.py) against the app
served by waitress on 127.0.0.1 (tests/web_support.py).

A coordinator signs in, sees the worklist, records a decision and sees the patient move
tab, and the decision is the record ``fhir-cohort review --list`` prints; a viewer has
nothing to decide with and a forged form is refused; a form without the CSRF token is
refused (403); every page sends an anonymous visitor to sign in, showing nothing; markup
in names and notes stays text; failed sign-ins are throttled; patient-page views are
audited. Selectors are the pages' ids and data attributes.
"""

from __future__ import annotations

import json

import pytest
from browser import chromium
from web_support import PASSWORDS, Clock, cli, served

from fhir_cohort.state import State

ELIGIBLE = "p01-eligible-baseline"
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
HOSTILE_NOTE = '<svg onload="window.__pwned=2"></svg><b>called</b>'
PAGES = ("/", "/?tab=declined", f"/patients/{ELIGIBLE}", "/my-work", "/do-not-contact",
         "/log")  # fmt: skip


@pytest.fixture(scope="module")
def driver():
    with chromium() as browser:
        yield browser


@pytest.fixture
def site(state_dir, driver):
    """The workbench over a fresh state (with a frozen clock), signed out."""
    with served(state_dir, clock=Clock()) as url:
        driver.delete_all_cookies()
        yield url


def css(driver, selector: str):
    return driver.find_elements("css selector", selector)


def gone(element) -> bool:
    """Whether ``element``'s page has been replaced (chromedriver says so in two ways)."""
    from selenium.common.exceptions import WebDriverException

    try:
        element.is_enabled()
    except WebDriverException:  # stale, or "node does not belong to the document"
        return True
    return False


def new_page(driver, old) -> None:
    """Wait until the page holding ``old`` is replaced and the new one has loaded."""
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, 20).until(lambda _: gone(old))
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def click(driver, element) -> None:
    """Click what loads a new page, and wait for it."""
    element.click()
    new_page(driver, element)


def sign_in(driver, url: str, name: str, password: str | None = None) -> None:
    driver.get(f"{url}/login")
    css(driver, "#name")[0].send_keys(name)
    css(driver, "#password")[0].send_keys(password or PASSWORDS[name])
    click(driver, css(driver, "#signin")[0])


def row(driver, pid: str):
    found = css(driver, f'#worklist tr[data-patient="{pid}"]')
    return found[0] if found else None


def post_form(driver, action: str, fields: dict[str, str]) -> None:
    """Build a form in the page and submit it, as a forged or scripted request would."""
    page = css(driver, "body")[0]
    driver.execute_script(
        """const [action, fields] = arguments;
        const form = document.createElement('form');
        form.method = 'post'; form.action = action;
        for (const [k, v] of Object.entries(fields)) {
          const input = document.createElement('input');
          input.type = 'hidden'; input.name = k; input.value = v; form.appendChild(input);
        }
        document.body.appendChild(form); form.submit();""",
        action,
        fields,
    )
    new_page(driver, page)


def test_sign_in_work_the_list_record_a_decision_and_see_it_in_review_list(site, driver, state_dir):
    driver.get(site)
    assert "/login" in driver.current_url
    sign_in(driver, site, "ana")
    assert css(driver, "#whoami")[0].text == "ana (coordinator)"
    first = css(driver, "#worklist tbody tr")[0]
    assert first.get_attribute("data-status") == "eligible"
    target = row(driver, ELIGIBLE)
    target.find_element("css selector", "select.decision").send_keys("declined")
    target.find_element("css selector", "input.close-reason").send_keys("not interested")
    target.find_element("css selector", "input.note").send_keys("said no on the phone")
    click(driver, target.find_element("css selector", "button.save"))
    assert row(driver, ELIGIBLE) is None  # off the to-work tab
    click(driver, css(driver, '#tabs a[data-tab="declined"]')[0])
    moved = row(driver, ELIGIBLE)
    assert moved is not None and "declined" in moved.find_element("css selector", ".decision").text
    assert css(driver, '#tabs a[data-tab="declined"] .count')[0].text == "1"
    code, out, _ = cli("review", "--list", "--state", str(state_dir))
    assert code == 0
    line = next(line for line in out.splitlines() if ELIGIBLE in line)
    assert "declined" in line and " ana " in line and "said no on the phone" in line


def test_a_viewer_has_nothing_to_decide_with_and_a_forged_form_is_refused(site, driver, state_dir):
    sign_in(driver, site, "vic")
    assert row(driver, ELIGIBLE) is not None
    assert css(driver, "form.record") == [] and css(driver, "#worklist select.decision") == []
    csrf = css(driver, '#signout input[name="csrf"]')[0].get_attribute("value")
    post_form(driver, f"/patients/{ELIGIBLE}/record",
              {"csrf": csrf, "trial": "misle", "decision": "enrolled"})  # fmt: skip
    assert css(driver, "#error h1")[0].text == "403"
    with State(state_dir) as state:
        assert state.reviews("misle") == []


def test_a_form_without_the_csrf_token_is_refused(site, driver, state_dir):
    sign_in(driver, site, "ana")
    post_form(driver, f"/patients/{ELIGIBLE}/record", {"trial": "misle", "decision": "enrolled"})
    assert css(driver, "#error h1")[0].text == "403"
    post_form(driver, "/do-not-contact", {"patient": ELIGIBLE, "reason": "x", "csrf": "guess"})
    assert css(driver, "#error h1")[0].text == "403"
    with State(state_dir) as state:
        assert state.reviews("misle") == [] and state.do_not_contact() == {}


def test_every_page_sends_an_anonymous_visitor_to_sign_in_and_shows_nothing(site, driver):
    for path in PAGES:
        driver.get(site + path)
        assert driver.current_url.startswith(f"{site}/login?next="), path
        source = driver.page_source
        assert 'class="count"' not in source and "data-patient" not in source
        assert css(driver, "#nav") == [] and css(driver, "#login") != []


def test_markup_in_names_and_notes_stays_text(site, driver, state_dir):
    with State(state_dir) as state:
        run = state.latest_run("misle")
        result = dict(state.results(run.id, ELIGIBLE)[ELIGIBLE], name=HOSTILE_NAME)
        snapshot = state.snapshots(run.id)[ELIGIBLE]
        state.record_run(
            trial="misle", scope=run.scope, as_of=run.as_of, started_at=run.started_at,
            outcome="complete", checkpoint=None, funnel={},
            candidates=[(ELIGIBLE, snapshot, result)],
        )  # fmt: skip
    sign_in(driver, site, "ana")
    assert row(driver, ELIGIBLE).find_element("css selector", "a.name").text == HOSTILE_NAME
    driver.get(f"{site}/patients/{ELIGIBLE}?trial=misle")
    assert css(driver, "#patient-name")[0].text.startswith(HOSTILE_NAME)
    css(driver, "#act input.note")[0].send_keys(HOSTILE_NOTE)
    click(driver, css(driver, "#act button.save")[0])
    note = css(driver, "#history .action-record .note-text")[0]
    assert note.text == HOSTILE_NOTE
    assert driver.execute_script("return window.__pwned === undefined")
    assert css(driver, "#history svg, #history b, #patient-name img") == []


def test_failed_sign_ins_are_throttled(site, driver):
    for _ in range(5):
        sign_in(driver, site, "ana", "not-the-password")
        assert "do not match" in css(driver, "#login-error")[0].text
    sign_in(driver, site, "ana")  # the clock stands still: the wait is not over
    assert "too many failed sign-ins" in css(driver, "#login-error")[0].text
    assert css(driver, "#worklist") == []
    sign_in(driver, site, "root")  # another account signs in as usual
    assert css(driver, "#worklist") != []


def test_patient_page_views_are_audited(site, driver, state_dir):
    sign_in(driver, site, "vic")
    click(driver, row(driver, ELIGIBLE).find_element("css selector", "a.name"))
    assert css(driver, "#patient-id")[0].text == ELIGIBLE
    assert css(driver, "#clear-exclusions")[0].text.startswith("no exclusion found: ")
    with State(state_dir) as state:
        views = state.views()
    assert [(v[0], v[2], v[3]) for v in views] == [("vic", "misle", ELIGIBLE)]
    assert json.dumps(views).count("Z") == 1  # one UTC instant


@pytest.mark.parametrize("width", [390, 1400])
def test_pages_read_without_sideways_scrolling(site, driver, width):
    sign_in(driver, site, "ana")
    try:
        driver.set_window_size(width, 900)
        for path in ("/", f"/patients/{ELIGIBLE}?trial=misle", "/my-work", "/log"):
            driver.get(site + path)
            wide = driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert wide <= 0, (path, wide)
    finally:
        driver.set_window_size(1280, 1024)
