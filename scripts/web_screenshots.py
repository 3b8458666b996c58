"""Screenshots of the coordinators' workbench for the README (docs/workbench-*.png).

Two runs over the bundled synthetic cohort (as of 2026-06-30 and 2026-07-22), a
coordinator and a few decisions, owners and next actions recorded through the web forms'
own records; then the app is served by waitress on 127.0.0.1 and headless Chromium
(Debian's chromium and chromium-driver, through Selenium from the test extras) signs in
and takes the worklist and a patient page at 1,400 px (desktop) and 390 px (phone).

    python scripts/web_screenshots.py        # writes docs/workbench-*.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium  # noqa: E402  (tests/browser.py: the same browser the tests use)
from web_support import served  # noqa: E402

from fhir_cohort.cli import main  # noqa: E402
from fhir_cohort.state import State  # noqa: E402
from fhir_cohort.web.auth import hash_password  # noqa: E402

USER, PASSWORD = "arivera", "synthetic-demo-password"
PATIENT = "p110-two-washouts-later-wins"  # in washout on 2026-07-22: the call-back pre-filled
DECIDED = (
    ("p01-eligible-baseline", "contacted", "left a message, calling back Friday"),
    ("p02-age-18-birthday-on-d", "scheduled", "screening visit booked"),
    ("p05-age-65-day-before-66th", "declined", "not interested"),
)
SHOTS = (("", "worklist"), (f"/patients/{PATIENT}?trial=misle", "patient"))


def prepare(state: Path, out: Path) -> None:
    for as_of in ("2026-06-30", "2026-07-22"):
        code = main(["screen", "--as-of", as_of, "--state", str(state), "--out", str(out),
                     "--quiet"])  # fmt: skip
        if code:
            raise SystemExit(f"screen as of {as_of} exited {code}")
    with State(state) as db:
        db.add_user(USER, "coordinator", hash_password(PASSWORD))
        for patient, status, note in DECIDED:
            db.add_review("misle", patient, status, note, USER)
        db.add_action("misle", "p01-eligible-baseline", "owner", USER, USER)
        db.add_action("misle", "p01-eligible-baseline", "next", "call back", USER, "2026-07-24")
        db.add_action("misle", "p05-age-65-day-before-66th", "close", "not interested", USER)


def shoot(driver, url: str, path: Path, width: int) -> None:
    """The whole page at ``width`` (the window is made as tall as the page, at most 2,400)."""
    driver.set_window_size(width, 900)
    driver.get(url)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 120, 2400))
    driver.save_screenshot(str(path))


def main_() -> None:
    docs = ROOT / "docs"
    written = []
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        prepare(state, Path(folder) / "out")
        with served(state) as site, chromium() as driver:
            driver.get(f"{site}/login")
            driver.find_element("css selector", "#name").send_keys(USER)
            driver.find_element("css selector", "#password").send_keys(PASSWORD)
            driver.find_element("css selector", "#signin").click()
            for width, suffix in ((1400, ""), (390, "-phone")):
                for path, name in SHOTS:
                    target = docs / f"workbench-{name}{suffix}.png"
                    shoot(driver, site + (path or "/"), target, width)
                    written.append(target.name)
    print("wrote " + ", ".join(f"docs/{name}" for name in written))


if __name__ == "__main__":
    main_()
