"""The dashboard in a real headless Chromium: it renders, and shows the report's numbers.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` and ``pillow``
packages. Without them the test skips with one loud line, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _middleware_helpers import serve
from starlette.applications import Starlette
from starlette.routing import Mount
from test_report_helpers import ADMIN, ADMIN_TOKEN, EXPECTED, dashboard_numbers, run_session

from credit_middleware import Ledger
from credit_middleware.admin import admin_app, bearer_token_guard
from credit_middleware.metrics import PrometheusObserver
from credit_middleware.report import build_report

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

    admin = admin_app(ledger, authorize=bearer_token_guard(ADMIN_TOKEN), refusals=observer)
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
            # Without credentials the page is a bare 401 problem: no numbers at all.
            browser.get(f"{base}/admin/")
            assert "unauthenticated" in browser.page_source
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
