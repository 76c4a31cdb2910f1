"""The dashboard in a real browser (Debian's chromium, driven by playwright) against a
real API process, workers and simulator: log in, filter, open a bot, press stop.

Screenshots go to $BOTENGINE_SCREENSHOTS (default: the test's temp folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine import lifecycle
from engine.embedded import free_port
from tests.chain_support import Engine, bot_config
from tests.support import wait_for

pytestmark = [pytest.mark.sqlite_only, pytest.mark.slow]

TOKEN = "dashboard-test-token-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BOTS = 12


def _browser() -> Any:
    if CHROMIUM is None:
        pytest.skip("no chromium here: `apt-get install chromium` (Debian) to run the browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `pip install -e '.[dev]'`")
    return sync_playwright


@pytest.fixture
def api_url(engine: Engine, tmp_path: Path) -> Iterator[str]:
    """The API served by its own process (as `botengine api` does) on the engine's stores."""
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from engine.api import serve; serve('127.0.0.1', {port})"],
        env={**engine.env, "API_TOKEN": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/ui", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, 30), (tmp_path / "api.log").read_text()
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_log_in_filter_open_a_bot_and_stop_it(engine: Engine, api_url: str, tmp_path: Path) -> None:
    sync_playwright = _browser()
    from playwright.sync_api import expect

    shots = Path(os.environ.get("BOTENGINE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    # Given a fleet of bots ticking and trading on a worker, half of them labelled `even`
    engine.procs.worker("w1")
    for i in range(BOTS):
        labels = "[even, demo]" if i % 2 == 0 else "[demo]"
        config = bot_config(
            f"bot-{i:02d}",
            interval="1s",
            params="quote_amount: 20, every: 2",
            extra=f"labels: {labels}\n",
        )
        lifecycle.start(engine.rt, config)
    assert wait_for(lambda: engine.bot("bot-00").orders_sent >= 2, 30)
    # And the data is behind the token: the API refuses a request without it
    assert httpx.get(f"{api_url}/api/v1/fleet", timeout=5).status_code == 401

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # When an operator opens the dashboard: only the login form shows
        page.goto(f"{api_url}/ui")
        page.wait_for_selector("#login-form", state="visible")
        assert page.is_hidden("#fleet")
        # When a wrong token is given, it says so
        page.fill("#token", "not-the-token-at-all")
        page.click("#login-form button")
        page.wait_for_selector("#login-error:has-text('Wrong token')")
        # When the right one is given, the fleet shows every bot and its health
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        rows = page.locator("#bots tbody tr[data-bot]")
        expect(rows).to_have_count(BOTS)
        page.wait_for_selector("#t-running .v:has-text('12')")
        page.wait_for_selector("#t-workers .v:has-text('1')")
        page.wait_for_selector("#health-ok:has-text('fleet ok')")
        # (ticks/s needs two samples of the counters: wait for a later poll)
        expect(page.locator("#health .tile", has_text="ticks/s")).not_to_contain_text(
            "\u2013", timeout=15_000
        )
        page.screenshot(path=str(shots / "dashboard-fleet.png"), full_page=True)
        # When the table is filtered by label and searched
        page.fill("#label", "even")
        expect(rows).to_have_count(BOTS // 2)
        names = [rows.nth(i).get_attribute("data-bot") for i in range(BOTS // 2)]
        assert names == [f"bot-{i:02d}" for i in range(0, BOTS, 2)]
        page.fill("#q", "bot-04")
        expect(rows).to_have_count(1)
        assert "1\u20131 of 1 bots" in page.inner_text("#page-info")
        page.screenshot(path=str(shots / "dashboard-filtered.png"), full_page=True)
        # When a bot is opened, its page shows status, the PnL curve, orders and ticks
        page.click("#bots a:has-text('bot-04')")
        page.wait_for_selector("#bot-name:has-text('bot-04')")
        page.wait_for_selector("#bot-status:has-text('running')")
        page.wait_for_selector("#chart polyline")
        page.wait_for_selector("#ticks tbody tr td:has-text('ok')")
        assert "bot-04" in page.inner_text("#config")
        page.screenshot(path=str(shots / "dashboard-bot.png"), full_page=True)
        # When stop is pressed and confirmed
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(".actions button[data-action='stop']")
        # Then the page shows it stopped, and so does the database
        page.wait_for_selector("#bot-status:has-text('stopped')", timeout=30_000)
        assert engine.bot("bot-04").status == "stopped"
        assert engine.bot("bot-02").status == "running"
        page.screenshot(path=str(shots / "dashboard-stopped.png"), full_page=True)
        # And a cancelled confirmation does nothing
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.click(".actions button[data-action='start']")
        page.wait_for_timeout(500)
        assert engine.bot("bot-04").status == "stopped"
        browser.close()
    assert errors == []
