"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``make test`` installs) driven by Selenium, against a daemon with
the local backend deploying the embedded example for real (emulators, processes, the director).

The runs list is open before the run starts: its row appears and the link leads to the run
page, which then follows the run to ``succeeded`` through server-sent events alone — a marker
set in the page's window survives, so the page was never reloaded. ``DASHBOARD_SCREENSHOT=PATH``
also saves the final run page there (the README's docs/dashboard.png is made so).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import start_local

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
RUN = "dash-1"


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("headless Chromium is missing: `make test` installs it "
                    "(apt-get install chromium chromium-driver)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # Both paths given: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, css: str) -> str:
    """The element's text ('' if there is none), read again if the page re-rendered it meanwhile."""
    from selenium.common.exceptions import NoSuchElementException

    try:
        return str(settled(lambda: driver.find_element("css selector", css).text)).strip()
    except NoSuchElementException:
        return ""


def settled(read, timeout: float = 5.0):
    """``read()`` again while the live page replaces the elements it was reading (each update
    re-renders a section, so a reference found a moment ago may be stale)."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_until(predicate, timeout: float, what: str, driver=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    detail = ""
    if driver is not None:
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        detail = f"\npage text:\n{text_of(driver, 'body')[:3000]}\nconsole: {logs}"
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def test_a_real_run_followed_live_in_headless_chromium(local_settings, db, daemon_factory, workspace, browser,
                                                      tmp_path):
    driver = browser
    daemon = daemon_factory(local_settings)
    base = f"http://127.0.0.1:{daemon.http.port}/dashboard/"

    # The runs list, open before the run exists: the row arrives by the stream.
    driver.get(base)
    wait_until(lambda: text_of(driver, "#live") == "live", 10, "the runs stream to connect", driver)
    driver.execute_script("window.podiumMarker = 'list'")
    start_local(local_settings, RUN, workspace)
    row = f'#runs tr[data-run-id="{RUN}"]'
    wait_until(lambda: text_of(driver, row), 20, "the run's row in the list", driver)
    assert driver.execute_script("return window.podiumMarker") == "list", "the runs list was reloaded"
    assert "podium-demo" in text_of(driver, row)  # the target: architecture name and project
    assert "podium-local" in text_of(driver, row)

    # The run page, reached by its link while the run is still running.
    settled(lambda: driver.find_element("css selector", f"{row} a.run-link").click())
    wait_until(lambda: text_of(driver, "#run-id") == RUN, 10, "the run page", driver)
    driver.execute_script("window.podiumMarker = 'run'")
    seen: list[str] = []

    def status() -> str:
        value = text_of(driver, "#run-status")
        if value and (not seen or seen[-1] != value):
            seen.append(value)
        return value

    wait_until(lambda: status() == "running", 15, "the page to show the run running", driver)
    assert text_of(driver, "#cancel") and settled(lambda: driver.find_element("css selector", "#cancel").is_enabled())
    wait_until(lambda: status() in ("succeeded", "failed", "cancelled"), 90, "the run to end on the page", driver)
    assert seen[-1] == "succeeded", (seen, text_of(driver, "#error"))
    assert driver.execute_script("return window.podiumMarker") == "run", "the run page was reloaded"
    assert seen[0] == "running"

    # What the page shows is the run document's: state, graph, progress, outputs, audit log.
    doc = db.collection(local_settings.collection).document(RUN).get().to_dict()
    assert text_of(driver, "#run-state") == doc["state"] == "succeeded"
    # the machine's graph (Graphviz's and/or the page's drawing), the current state highlighted
    def titles(css: str) -> set[str]:
        return {n.find_element("css selector", "title").get_attribute("textContent").strip()
                for n in driver.find_elements("css selector", css)}

    assert settled(lambda: titles("#graph g.node.current")) == {"succeeded"}
    drawn = settled(lambda: titles("#graph g.node"))
    assert {"pending", "generating_config", "dependent_setup", "succeeded", "failed", "cancelled"} <= drawn
    for phase, items in doc["progress"].items():
        for item, item_status in items.items():
            chip = f'#progress [data-phase="{phase}"] [data-item="{item}"] .item-status'
            assert text_of(driver, chip) == item_status, (phase, item)
    subscriber_url = doc["outputs"]["urls"]["subscriber"]
    links = settled(lambda: [a.get_attribute("href").rstrip("/")
                             for a in driver.find_elements("css selector", "#output-urls a")])
    assert subscriber_url.rstrip("/") in links
    resources = text_of(driver, "#output-resources")
    assert "tracer-topic" in resources and "pubsub_topic" in resources
    wait_until(lambda: len(driver.find_elements("css selector", "#audit tbody tr"))
               >= len([e for e in db.collection(local_settings.collection).document(RUN).collection("events").stream()]),
               10, "every audit record on the page", driver)
    audit = text_of(driver, "#audit")
    assert "command.start" in audit and "director.dependent_complete" in audit
    assert not settled(lambda: driver.find_element("css selector", "#cancel").is_enabled())  # nothing to cancel
    assert text_of(driver, "#live") == "live"

    shot = tmp_path / "dashboard.png"
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(shot))
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, Path(os.environ["DASHBOARD_SCREENSHOT"]))
