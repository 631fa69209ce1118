"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, selenium):
it loads without console errors, shows the meters and their values, updates live, acknowledges
an alarm (asking the token once) and adds a meter through the form. Screenshots are saved in
the test's temporary directory."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.bridge.console_harness import console_config, start_console
from tests.bridge.mosquitto import Mosquitto, free_port
from tests.bridge.test_run_cli import bridge_process  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll a (blocking, quick) browser check from a thread until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await trio.to_thread.run_sync(check)
        except Exception as exc:  # noqa: BLE001 - the element may not exist yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await trio.sleep(0.2)
    raise AssertionError(f"dashboard: no {what} within {timeout} s (last: {last!r})")


async def test_dashboard_in_headless_chromium(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    browser: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    _sim, ports = await simulator(meters=3)
    dead_port = free_port()  # nothing listens there: its meter raises an alarm
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "m1": ports[1], "dead": dead_port},
        data_dir=tmp_path / "data",
        alarms={"no_reading_intervals": 3},
    )
    process, api = await start_console(bridge_process, config, port)
    await api.wait_until(
        "/api/v1/alarms",
        lambda d: any(a["name"] == "meter.dead.no_reading" for a in d["active"]),
        30,
        "an alarm",
    )

    def run(fn: Callable[[], Any]) -> Any:
        return trio.to_thread.run_sync(fn)

    await run(lambda: browser.get(f"http://127.0.0.1:{port}/"))
    for name in ("m0", "m1", "dead"):
        await _until(lambda n=name: browser.find_element(By.ID, f"meter-{n}"), 15, f"row {name}")

    def voltage() -> str:
        row = browser.find_element(By.ID, "meter-m0")
        return str(row.find_element(By.CSS_SELECTOR, 'span[data-key="voltage_l1"]').text)

    first = await _until(voltage, 15, "a value of m0")
    assert "V" in first
    await _until(lambda: voltage() != first, 10, "a live change of m0's voltage")
    page = await run(lambda: browser.find_element(By.TAG_NAME, "body").text)
    assert "m0" in page and "m1" in page and "Hz" in page
    await _until(
        lambda: browser.find_element(By.ID, "live").text == "live", 10, "the live indicator"
    )
    await run(lambda: browser.save_screenshot(str(tmp_path / "dashboard.png")))

    # Acknowledge the alarm: the token is asked once, then kept for the session.
    token = api.token
    assert token

    def click_ack() -> bool:
        browser.find_element(By.CSS_SELECTOR, "#alarms li.active button.ack").click()
        return True

    # The alarm list is re-rendered on updates: find and click in one go, again if replaced.
    await _until(click_ack, 15, "an acknowledge button")
    token_input = await _until(
        lambda: (e := browser.find_element(By.ID, "token-input")).is_displayed() and e,
        10,
        "the token dialog",
    )
    await run(lambda: token_input.send_keys(token))
    await run(lambda: browser.find_element(By.ID, "token-ok").click())
    await _until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#alarms li.acked"), 10, "an acked alarm"
    )
    alarms = (await api.get("/api/v1/alarms")).json
    dead = next(a for a in alarms["active"] if a["name"] == "meter.dead.no_reading")
    assert dead["acked"] is True

    # Add a meter through the form (no second token prompt).
    def fill() -> None:
        browser.find_element(By.ID, "f-name").send_keys("m2")
        browser.find_element(By.ID, "f-host").send_keys("127.0.0.1")
        browser.find_element(By.ID, "f-port").send_keys(str(ports[2]))
        browser.find_element(By.ID, "f-submit").click()

    await run(fill)
    await _until(lambda: browser.find_element(By.ID, "meter-m2"), 15, "the added meter's row")
    await _until(
        lambda: (
            browser.find_element(By.ID, "meter-m2")
            .find_element(By.CSS_SELECTOR, 'span[data-key="frequency"]')
            .text
        ),
        20,
        "a value of the added meter",
    )
    added = (await api.get("/api/v1/meters/m2")).json
    assert added["source"] == "api" and added["values"]
    await _until(
        lambda: (
            browser.find_element(By.ID, "meter-m2")
            .find_element(By.CSS_SELECTOR, 'span[data-key="frequency"]')
            .text.endswith("Hz")
        ),
        10,
        "the added meter's units",
    )

    logs = await run(lambda: browser.get_log("browser"))
    severe = [entry for entry in logs if entry["level"] == "SEVERE"]
    assert not severe, severe

    # Edit, disable and remove through the table's buttons and the form.
    def button(name: str, label: str) -> Any:
        row = browser.find_element(By.ID, f"meter-{name}")
        return next(b for b in row.find_elements(By.TAG_NAME, "button") if b.text == label)

    # Rows are re-rendered on updates: find and click in one go, again if the row was replaced.
    def click(name: str, label: str) -> bool:
        button(name, label).click()
        return True

    await _until(lambda: click("m1", "Edit"), 10, "m1's edit button")
    interval = await _until(
        lambda: (e := browser.find_element(By.ID, "f-interval")).get_attribute("value") and e,
        10,
        "the edit form",
    )

    def save_interval() -> None:
        interval.clear()
        interval.send_keys("0.5")
        browser.find_element(By.ID, "f-submit").click()

    await run(save_interval)
    await api.wait_until(
        "/api/v1/meters/m1", lambda d: d["interval_s"] == 0.5, 10, "the edited interval"
    )
    await _until(lambda: click("m2", "Disable"), 10, "m2's disable button")
    await _until(
        lambda: browser.find_element(By.CSS_SELECTOR, "#meter-m2 td.state").text == "disabled",
        10,
        "m2 disabled",
    )
    await _until(lambda: click("m2", "Remove"), 10, "m2's remove button")
    await _until(lambda: browser.switch_to.alert.accept() or True, 10, "the confirmation")
    await _until(lambda: not browser.find_elements(By.ID, "meter-m2"), 10, "m2 removed")
    assert (await api.get("/api/v1/meters/m2")).status == 404

    # A bad form entry shows the API's error with the field's path (the browser logs the 422).
    def fill_bad() -> None:
        browser.find_element(By.ID, "f-name").send_keys("m3")
        browser.find_element(By.ID, "f-host").send_keys("127.0.0.1")
        browser.find_element(By.ID, "f-port").send_keys(str(ports[0]))
        browser.find_element(By.ID, "f-submit").click()

    await run(fill_bad)
    error = await _until(lambda: browser.find_element(By.ID, "form-error").text, 10, "an error")
    assert error.startswith("host:")

    # Open the charts of a meter.
    await _until(lambda: click("m0", "Chart"), 10, "m0's chart button")
    await _until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#charts .chart polyline"), 10, "charts"
    )
    await run(lambda: browser.save_screenshot(str(tmp_path / "dashboard-charts.png")))
    # A phone-sized view stays readable (no horizontal overflow of the page itself).
    await run(lambda: browser.set_window_size(390, 844))
    await _until(
        lambda: browser.execute_script("return window.innerWidth") <= 400, 10, "the phone size"
    )
    await _until(
        lambda: browser.execute_script("return document.body.scrollWidth") <= 400,
        10,
        "no horizontal overflow at the phone size",
    )
    await run(lambda: browser.save_screenshot(str(tmp_path / "dashboard-phone.png")))

    logs = await run(lambda: browser.get_log("browser"))
    severe = [e for e in logs if e["level"] == "SEVERE" and "status of 422" not in e["message"]]
    assert not severe, severe
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0
