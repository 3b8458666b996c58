"""A real browser for the report tests: Debian's Chromium driven by Debian's chromedriver.

Rule: the browser and its driver are the system's (``apt-get install chromium
chromium-driver``; .ci/run installs them), never downloaded: the driver's path
is always given to Selenium, so Selenium Manager is never asked for anything,
and ``SE_OFFLINE`` is set while a browser runs in case a later Selenium asks
anyway. Chromium runs headless with a throwaway profile and its background
networking switched off. Where Selenium, Chromium or chromedriver is missing
the tests are skipped, except in CI, where that is an error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)

ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1024",
)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed: .ci/run must install it")
    pytest.skip(f"{what} is not installed")


def require_browser() -> tuple[str, str]:
    """The paths of Chromium and chromedriver; skip (or, in CI, fail) if either is missing."""
    if importlib.util.find_spec("selenium") is None:
        _missing("selenium (pip install -e '.[test]')")
    browser = _which(BROWSER_NAMES)
    if browser is None:
        _missing("chromium (apt-get install chromium)")
    driver = _which(DRIVER_NAMES)
    if driver is None:
        _missing("chromedriver (apt-get install chromium-driver)")
    return browser, driver


@contextmanager
def chromium() -> Iterator:
    """Start headless Chromium; yield its selenium ``WebDriver``, quit it on exit.

    Dialogs (``alert()``) are left open rather than dismissed, so a test can see
    that one was opened: check ``driver.switch_to.alert`` before anything else.
    """
    browser, driver_path = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(
        prefix="fhir-cohort-chromium-", ignore_cleanup_errors=True
    ) as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for argument in ARGUMENTS:
            options.add_argument(argument)
        options.add_argument(f"--user-data-dir={profile}")
        options.unhandled_prompt_behavior = "ignore"
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.set_page_load_timeout(30)
            driver.set_script_timeout(10)
            yield driver
        finally:
            driver.quit()
            if offline is None:
                os.environ.pop("SE_OFFLINE", None)
            else:
                os.environ["SE_OFFLINE"] = offline
