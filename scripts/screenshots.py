"""Screenshots of report.html for the bundled cohort, for the README (docs/*.png).

Two runs over the bundled synthetic cohort, as of 2026-06-30 and 2026-07-22,
with one review decision between them, so the page shows what changed; then
headless Chromium (Debian's chromium and chromium-driver, through Selenium
from the test extras) takes the top of the page, one candidate's card (its folds opened) and the top
of the page at a phone's width (390 px).

    python scripts/screenshots.py   # docs/report-fixtures.png, report-card.png, report-phone.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium  # noqa: E402  (tests/browser.py: the same browser the tests use)

from fhir_cohort.cli import main  # noqa: E402

CARD_PATIENT = "p110-two-washouts-later-wins"  # two washouts running on 2026-07-22
SHOTS = ("report-fixtures.png", "report-card.png", "report-phone.png")
REVIEWED = ("p49-fever-degF", "contacted", "left a message, calling back Friday", "A. Rivera")


def run(state: Path, out: Path) -> None:
    for as_of in ("2026-06-30", "2026-07-22"):
        code = main(
            ["screen", "--as-of", as_of, "--state", str(state), "--out", str(out), "--quiet"]
        )
        if code:
            raise SystemExit(f"screen as of {as_of} exited {code}")
        if as_of == "2026-06-30":
            patient, status, note, by = REVIEWED
            main(
                [
                    "review",
                    patient,
                    "--status",
                    status,
                    "--note",
                    note,
                    "--by",
                    by,
                    "--state",
                    str(state),
                ]
            )


def main_() -> None:
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory() as folder:
        state, out = Path(folder) / "state", Path(folder) / "out"
        run(state, out)
        with chromium() as driver:
            driver.set_window_size(1280, 2300)  # what changed, the funnel, the top of the list
            driver.get((out / "report.html").as_uri())
            driver.save_screenshot(str(docs / "report-fixtures.png"))
            driver.set_window_size(1280, 3000)  # an element is captured only where it is in view
            card = driver.execute_script(
                "const card = [...document.querySelectorAll('section.card')]"
                ".find(c => c.textContent.includes(arguments[0]));"
                "card.querySelectorAll('details').forEach(d => d.open = true);"
                "return card;",
                CARD_PATIENT,
            )
            card.screenshot(str(docs / "report-card.png"))
            driver.set_window_size(390, 1400)  # a phone: the same page, no sideways scrolling
            driver.get((out / "report.html").as_uri())
            driver.save_screenshot(str(docs / "report-phone.png"))
    print(f"wrote {', '.join(str(docs / n) for n in SHOTS)}")


if __name__ == "__main__":
    main_()
