"""The admin app in a real headless Chromium: the dashboard renders and shows the report's
numbers; an operator signs in through the form, searches, opens an account, changes its tier
and exports its history as CSV.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` and ``pillow``
packages. Without them the test skips with one loud line, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _middleware_helpers import serve
from starlette.applications import Starlette
from starlette.routing import Mount
from test_report_helpers import ADMIN, ADMIN_TOKEN, EXPECTED, dashboard_numbers, run_session

from credit_middleware import Ledger
from credit_middleware.admin import admin_app
from credit_middleware.ops.metrics import PrometheusObserver
from credit_middleware.ops.report import build_report

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1600",
)


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver, or skip (fail under CI) saying what is missing."""
    missing = []
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("apt-get install chromium")
    if driver is None:
        missing.append("apt-get install chromium-driver")
    for module, package in (("selenium", "selenium"), ("PIL", "pillow")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"pip install {package}")
    if missing:
        msg = "the dashboard browser test needs: " + "; ".join(missing)
        if IN_CI:
            pytest.fail(msg + " (CI=true requires it)")
        print(f"\n*** SKIPPING THE BROWSER TEST: {msg} ***", file=sys.stderr)
        pytest.skip(msg)
    assert chromium is not None
    assert driver is not None
    return chromium, driver


def _server_app(url: str, clock: Any, observer: PrometheusObserver) -> Starlette:
    """The admin app on its own ledger connection, opened and closed on the server's loop."""
    ledger = Ledger(url, clock=clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ledger.close()

    admin = admin_app(ledger, token=ADMIN_TOKEN, tiers=["trial", "pro"], refusals=observer)
    return Starlette(routes=[Mount("/admin", app=admin)], lifespan=lifespan)


def _look(png: bytes) -> tuple[tuple[int, int], int, float]:
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    spread = sum(ImageStat.Stat(image.convert("L")).stddev)
    return image.size, len(colours), spread


def _driver(chromium: str, driver_path: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.mark.slow
def test_the_dashboard_renders_the_reports_numbers(
    sqlite_url: str, clock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium, driver_path = _browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not fetch drivers: we have one

    async def prepare() -> tuple[dict[str, Any], PrometheusObserver]:
        ledger = Ledger(sqlite_url, clock=clock)
        await ledger.migrate()
        try:
            session = await run_session(ledger, clock)
            await session.middleware_client.aclose()
            return (await build_report(ledger)).to_json(), session.observer
        finally:
            await ledger.close()

    data, observer = asyncio.run(prepare())
    assert data["accounts"] == EXPECTED["accounts"]

    from selenium.webdriver.common.by import By

    with serve(_server_app(sqlite_url, clock, observer)) as base:
        browser = _driver(chromium, driver_path)
        try:
            # Without credentials a browser gets the sign-in form: no numbers at all.
            browser.get(f"{base}/admin/")
            assert "/admin/login" in browser.current_url
            assert browser.find_elements(By.ID, "password")
            assert browser.find_elements(By.CSS_SELECTOR, "[data-k]") == []

            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": ADMIN})
            browser.get(f"{base}/admin/")
            assert browser.title == "Credit usage"

            shown = {
                e.get_attribute("data-k"): e.text
                for e in browser.find_elements(By.CSS_SELECTOR, "[data-k]")
            }
            expected = dashboard_numbers(data)
            assert {k: shown.get(k) for k in expected} == expected
            assert shown["refusals.count"] == "3"
            embedded = browser.find_element(By.ID, "report-data").get_attribute("textContent")
            assert json.loads(embedded or "{}") == data

            charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
            assert len(charts) == 4  # funnel, daily, cohorts, refusals
            for chart in charts:
                assert chart.size["width"] > 100
                assert chart.size["height"] > 30
                assert chart.find_elements(By.TAG_NAME, "rect")
            rows = browser.find_elements(By.CSS_SELECTOR, "#refusals td")
            assert {"402", "429", "401"} <= {r.text for r in rows}

            png = browser.get_screenshot_as_png()
            (tmp_path / "dashboard.png").write_bytes(png)
            if os.environ.get("CREDIT_DASHBOARD_PNG"):  # keep a copy to look at
                Path(os.environ["CREDIT_DASHBOARD_PNG"]).write_bytes(png)
            size, colours, spread = _look(png)
            assert size[0] >= 1000
            assert size[1] >= 800
            assert colours > 50, "the screenshot is nearly blank"
            assert spread > 10, "the screenshot has no contrast"
        finally:
            browser.quit()


def _prepare_accounts(url: str, clock: Any) -> None:
    async def run() -> None:
        async with Ledger(url, clock=clock) as ledger:
            await ledger.migrate()
            for name in ("alice", "albert", "bob"):
                await ledger.open_account(name, tier="trial", metadata={"email": f"{name}@x.test"})
                await ledger.grant(name, "5", source="promo", key="welcome")
            for i in range(3):
                await ledger.debit("alice", "0.25", key=f"d{i}", route="/v1/chat")

    asyncio.run(run())


def _ledger_state(url: str, clock: Any) -> tuple[str, list[Any], int]:
    async def run() -> tuple[str, list[Any], int]:
        async with Ledger(url, clock=clock) as ledger:
            account = await ledger.get_account("alice")
            assert account is not None
            changes = await ledger.tier_history("alice")
            report = await ledger.verify()
            assert report.ok, report.discrepancies
            return account.tier, changes, len(await ledger.history("alice", limit=1000))

    return asyncio.run(run())


def _navigate(browser: Any, action: Callable[[], object]) -> None:
    """Do what loads a new page (a click, a submit) and wait until the old page is gone:
    selenium does not always wait for a navigation a form submit starts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(old))


def _wait_for_file(folder: Path, name: str) -> Path:
    """Chromium writes a download in the background: poll for it (bounded, not timed)."""
    import time

    target = folder / name
    deadline = time.monotonic() + 30
    while not (target.exists() and target.stat().st_size > 0):
        assert time.monotonic() < deadline, f"no download {name}: {list(folder.iterdir())}"
        time.sleep(0.05)
    return target


@pytest.mark.slow
def test_an_operator_signs_in_searches_changes_a_tier_and_exports_csv(
    sqlite_url: str, clock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium, driver_path = _browser()
    monkeypatch.setenv("SE_OFFLINE", "true")
    _prepare_accounts(sqlite_url, clock)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with serve(_server_app(sqlite_url, clock, PrometheusObserver())) as base:
        browser = _driver(chromium, driver_path)
        try:
            browser.execute_cdp_cmd(
                "Browser.setDownloadBehavior",
                {"behavior": "allow", "downloadPath": str(downloads)},
            )
            # A deep link without a session goes to the form, and back after signing in.
            browser.get(f"{base}/admin/accounts?q=al")
            assert "/admin/login" in browser.current_url
            browser.find_element(By.ID, "password").send_keys("not the token at all")
            _navigate(browser, browser.find_element(By.ID, "sign-in").click)
            assert "Wrong user or password" in browser.find_element(By.ID, "login-error").text
            browser.find_element(By.ID, "username").clear()
            browser.find_element(By.ID, "username").send_keys("ops")
            browser.find_element(By.ID, "password").send_keys(ADMIN_TOKEN)
            _navigate(browser, browser.find_element(By.ID, "sign-in").click)
            assert browser.current_url == f"{base}/admin/accounts?q=al"
            cookie = browser.get_cookie("cm_admin_session")
            assert cookie is not None and cookie["httpOnly"] is True
            assert cookie["sameSite"] == "Strict"
            # the cookie is invisible to scripts on the page
            assert "cm_admin_session" not in browser.execute_script("return document.cookie")

            shown = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.t td a")]
            assert sorted(shown) == ["albert", "alice"]
            search = browser.find_element(By.ID, "q")
            search.clear()
            search.send_keys("alice@x.test")
            _navigate(browser, search.submit)
            links = browser.find_elements(By.CSS_SELECTOR, "table.t td a")
            assert [a.text for a in links] == ["alice"]
            _navigate(browser, links[0].click)

            assert browser.find_element(By.ID, "account-id").text == "alice"
            value = {
                e.get_attribute("data-k"): e.text
                for e in browser.find_elements(By.CSS_SELECTOR, "[data-k]")
            }
            assert (value["available"], value["tier"]) == ("4.25", "trial")
            assert "/v1/chat" in browser.page_source
            Select(browser.find_element(By.ID, "tier")).select_by_value("pro")
            browser.find_element(By.ID, "reason").send_keys("bought the pro plan")
            _navigate(browser, browser.find_element(By.ID, "change-tier").click)
            assert browser.find_element(By.ID, "done").text == "Tier changed."
            assert browser.find_element(By.CSS_SELECTOR, '[data-k="tier"]').text == "pro"
            assert "bought the pro plan" in browser.page_source

            browser.find_element(By.LINK_TEXT, "Export all entries as CSV").click()
            exported = _wait_for_file(downloads, "history-alice.csv").read_text()

            _navigate(browser, browser.find_element(By.ID, "logout").click)
            assert "/admin/login" in browser.current_url
            assert browser.get_cookie("cm_admin_session") is None
            browser.get(f"{base}/admin/account?id=alice")
            assert "/admin/login" in browser.current_url
        finally:
            browser.quit()

    tier, changes, entries = _ledger_state(sqlite_url, clock)
    assert tier == "pro"
    assert [(c.old_tier, c.new_tier, c.reason) for c in changes] == [
        ("trial", "pro", "bought the pro plan")
    ]
    assert (changes[0].metadata["by"], changes[0].metadata["via"]) == ("ops", "session")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == entries == 4
    assert [r["kind"] for r in rows] == ["debit", "debit", "debit", "grant"]
