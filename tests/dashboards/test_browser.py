"""The dashboard in headless Chromium (Debian's package): what a person sees matches the
metrics API, and a payment posted to the webhook shows up without a reload.

Skipped when Chromium is not installed, unless ROI_REQUIRE_BROWSER=1 (CI sets it, and
installs chromium and chromium-driver). Screenshots go to ROI_SCREENSHOT_DIR
(default .roi/screenshots) for a person to look at."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.auth.principal import Role
from dashboards.format import money, percent
from tests import stripe_events as se
from tests.conftest import TEST_TOKENS, LiveServer, TestDatabase, WebhookClient
from tests.dashboards.test_callbacks import T, seed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(
    os.environ.get("ROI_SCREENSHOT_DIR", Path(__file__).parents[2] / ".roi/screenshots")
)
PERIOD = {"start": "2024-03-10", "end": "2024-03-11", "tz": "UTC"}
LINK = "/dashboard/?period=custom&start=2024-03-10&end=2024-03-11&tz=UTC&granularity=hour"
KPIS = ("net_revenue", "cost", "margin", "margin_pct", "roi")

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("ROI_REQUIRE_BROWSER") == "1":
        raise RuntimeError("ROI_REQUIRE_BROWSER=1 but chromium or chromedriver is missing")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only where a browser exists)
from selenium.webdriver.chrome.service import Service  # noqa: E402


@pytest.fixture(scope="module")
def browser(live_server: LiveServer) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1440,1600"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        sign_in(driver, live_server, TEST_TOKENS[Role.VIEWER])
        yield driver
    finally:
        driver.quit()


def sign_in(driver: webdriver.Chrome, server: LiveServer, token: str) -> None:
    """As a person does: the sign-in form, then the page it was asked for."""
    driver.get(server.url + "/dashboard/models")
    wait_until(lambda: driver.find_elements("id", "token"))  # redirected to /signin
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("css selector", "button[type=submit]").click()
    # Path only: once drawn, the page writes its canonical view into the query string.
    wait_until(lambda: urlsplit(driver.current_url).path == "/dashboard/models")


def kpi(driver: webdriver.Chrome, key: str) -> tuple[str, str] | None:
    """(text shown, exact decimal) of a KPI card, or None while it is not drawn."""
    found = driver.execute_script(
        "const e = document.getElementById(arguments[0]);"
        "return e ? [e.textContent, e.getAttribute('data-value')] : null;",
        f"kpi-{key}-value",
    )
    return tuple(found) if found else None


def wait_until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.02)


def api_total(webhook: WebhookClient) -> dict[str, str]:
    return webhook.http.get("/api/metrics/streams", params=PERIOD).json()["total"]  # type: ignore[no-any-return]


def shown_as_api(total: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {
        key: (percent(total[key]) if key in ("margin_pct", "roi") else money(total[key], "usd"),
              total[key])
        for key in KPIS
    }  # fmt: skip


def test_the_overview_shows_the_apis_figures_and_moves_when_a_payment_arrives(
    browser: webdriver.Chrome, live_server: LiveServer, webhook: WebhookClient, db: TestDatabase
) -> None:
    seed(webhook)
    browser.get(live_server.url + LINK)
    expected = shown_as_api(api_total(webhook))
    wait_until(lambda: {k: kpi(browser, k) for k in KPIS} == expected)
    assert expected["net_revenue"] == ("$120.00", "120.00")
    as_of = webhook.http.get("/api/metrics/streams", params=PERIOD).json()["trust"]["as_of"]
    shown_as_of = f"Data as of {datetime.fromisoformat(as_of):%Y-%m-%d %H:%M:%S} UTC"
    wait_until(lambda: browser.find_element("id", "as-of").text == shown_as_of)

    charge = se.charge(amount=4_321, created=T + 120, metadata={"stream": "api"})
    assert webhook.post(se.charge_succeeded(charge=charge, created=T + 120)).status_code == 200

    # No reload: the live link redraws the page.
    after = shown_as_api(api_total(webhook))
    assert after["net_revenue"] == ("$163.21", "163.21")
    wait_until(lambda: {k: kpi(browser, k) for k in KPIS} == after, timeout=5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "overview.png"))


def test_every_page_renders_without_errors_in_the_browser_console(
    browser: webdriver.Chrome, live_server: LiveServer, webhook: WebhookClient
) -> None:
    seed(webhook)
    browser.get_log("browser")  # start from a clean console
    query = LINK.split("?", 1)[1]
    for page, marker in (
        (f"/dashboard/stream?{query}&stream=chatbot", "stream-kpis"),
        (f"/dashboard/models?{query}", "model-table"),
        (f"/dashboard/health?{query}", "health-database"),
    ):
        browser.get(live_server.url + page)
        wait_until(lambda m=marker: browser.execute_script(
            "return document.getElementById(arguments[0]) !== null "
            "&& document.getElementById(arguments[0]).textContent.length > 0", m))  # fmt: skip
        name = page.split("?")[0].rsplit("/", 1)[1]
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
