"""The admin dashboard in a real headless Chromium (Debian's, driven by
playwright) against a running Broadcaster and the admin API over loopback,
with events flowing in every category while the page is watched.

Set ``DASHBOARD_SCREENSHOT=/path/to.png`` to keep a picture of the live page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.cluster import Membership
from broadcaster.core import Broadcaster
from broadcaster.events import Category
from broadcaster.reconcile.schedule import ReconcileSchedule
from broadcaster.rollout import policy
from broadcaster.rollout.plan import Gates, Plan, StageHealth
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore

pytestmark = pytest.mark.slow

TOKEN = "secret-token-for-the-dashboard"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Page-side waits: the page refreshes every second; a loaded CI machine may be slow.
WAIT_MS = 10_000


@dataclass
class Service:
    b: Broadcaster
    url: str
    client: httpx.AsyncClient


@dataclass
class Console:
    """Console errors and uncaught exceptions of one page."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)


async def _produce(b: Broadcaster, stop: asyncio.Event) -> None:
    """Publish into every category, ~100 events/s in all, until ``stop``."""
    i = 0
    while not stop.is_set():
        for cat in Category:
            await b.publish(cat, "dashboard.tick", {"i": i})
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    b = Broadcaster(
        load_settings(env_file=None),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    schedule = ReconcileSchedule(b, interval_s=1, retention_s=None)
    async with b, schedule:
        cluster = Membership(b, instance_id="dash-1", lease_s=5, lease=False, info=dict)
        await cluster.start()
        app = create_app(b, TokenSet.of({"ops": TOKEN}), cluster=cluster)
        try:
            async with AdminServer(app, port=0) as server:
                stop = asyncio.Event()
                producer = asyncio.create_task(_produce(b, stop), name="dashboard-producer")
                try:
                    async with httpx.AsyncClient(
                        base_url=server.url, headers=AUTH, timeout=10
                    ) as client:
                        yield Service(b, server.url, client)
                finally:
                    stop.set()
                    await producer
        finally:
            await cluster.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def _number(page: Page, testid: str) -> int:
    text = await page.get_by_test_id(testid).text_content()
    assert text is not None
    return int(text.replace(",", ""))


async def _wait_above(page: Page, testid: str, floor: int) -> None:
    await page.wait_for_function(
        """([testid, floor]) => {
            const node = document.querySelector(`[data-testid="${testid}"]`);
            const n = node ? parseInt(node.textContent.replace(/,/g, ""), 10) : NaN;
            return n > floor;
        }""",
        arg=[testid, floor],
        timeout=WAIT_MS,
    )


async def test_dashboard_shows_live_figures_and_changes_a_percentage(
    service: Service, browser: Browser
) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    console = Console()
    console.watch(page)
    await page.goto(f"{service.url}/dashboard#token={TOKEN}")

    # The token leaves the address bar once it is in sessionStorage.
    assert "token" not in page.url

    # Figures move while events flow.
    await _wait_above(page, "published-CRITICAL", 0)
    first = await _number(page, "published-CRITICAL")
    await _wait_above(page, "published-CRITICAL", first)
    assert await _number(page, "published-CRITICAL") > first
    await expect(page.get_by_test_id("rate-CRITICAL")).to_have_text(re.compile(r"^\d+\.\d /s$"))
    await page.wait_for_function(
        "() => parseFloat(document.querySelector('[data-testid=rate-PERFORMANCE]')"
        ".textContent) > 0",
        timeout=WAIT_MS,
    )
    await expect(page.get_by_test_id("last-updated")).not_to_have_text("never")
    # An event still in flight when /stats is read may hold the rate under 100 %.
    await expect(page.get_by_test_id("success-CRITICAL")).to_have_text(
        re.compile(r"^(100\.00|9\d\.\d\d) %$")
    )
    await expect(page.get_by_test_id("spark-CRITICAL").locator("polyline")).to_have_count(1)
    await expect(page.get_by_test_id("health-status")).to_have_text("ok")
    # One instance, writing to Realtime itself (no lease: not a shared store).
    await expect(page.get_by_test_id("instance-dash-1")).to_contain_text("writes Realtime")
    for name in ("websocket", "realtime"):
        await expect(page.get_by_test_id(f"breaker-{name}")).to_have_text("closed")
        await expect(page.get_by_test_id(f"share-{name}")).to_have_text("100 %")
    # The background reconciler runs every second: its figures reach the page.
    await expect(page.get_by_test_id("unrepaired-loss")).to_have_text("0")
    await expect(page.get_by_test_id("mismatches-total")).to_have_text("0")
    await expect(page.get_by_test_id("recon-lag")).to_have_text(re.compile(r"^\d+\.\d+ s$"))
    # Nobody reports receipts here: the page says so for each path.
    await expect(page.get_by_test_id("consumers-realtime")).to_have_text(
        "realtime: none (events unobserved)"
    )
    await expect(page.get_by_test_id("flag-percentage-PERFORMANCE")).to_have_text("50")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    assert console.errors == []

    # Change PERFORMANCE to 80 % from the page: applied, persisted, audited.
    await page.get_by_test_id("percentage-input-PERFORMANCE").fill("80")
    await page.get_by_test_id("percentage-apply-PERFORMANCE").click()
    result = page.get_by_test_id("percentage-result-PERFORMANCE")
    await expect(result).to_have_text("saved: 50 → 80 % (audit #1)")
    await expect(page.get_by_test_id("flag-percentage-PERFORMANCE")).to_have_text("80")
    config = (await service.client.get("/config")).json()
    assert config["flags"]["categories"]["PERFORMANCE"]["percentage"] == 80
    entries = (await service.client.get("/audit")).json()["entries"]
    assert [(e["actor"], e["path"]) for e in entries] == [
        ("ops", "PATCH /config/categories/PERFORMANCE")
    ]
    assert entries[0]["before"]["percentage"] == 50
    assert entries[0]["after"]["percentage"] == 80
    audit_list = page.get_by_test_id("audit-list")
    await expect(audit_list).to_contain_text("PATCH /config/categories/PERFORMANCE")
    await expect(audit_list).to_contain_text("ops")

    # Out of range: the 422 message is shown and nothing changes.
    assert console.errors == []
    await page.get_by_test_id("percentage-input-PERFORMANCE").fill("150")
    await page.get_by_test_id("percentage-apply-PERFORMANCE").click()
    await expect(result).to_have_text(
        "not saved (422): percentage: Input should be less than or equal to 100"
    )
    await expect(page.get_by_test_id("flag-percentage-PERFORMANCE")).to_have_text("80")
    config = (await service.client.get("/config")).json()
    assert config["flags"]["categories"]["PERFORMANCE"]["percentage"] == 80
    assert len((await service.client.get("/audit")).json()["entries"]) == 1
    # The browser reports the refused request itself; nothing else went wrong.
    assert len(console.errors) == 1 and "status of 422" in console.errors[0], console.errors

    await _rollouts_as_timelines(page, service)
    assert len(console.errors) == 1, console.errors

    if shot := os.environ.get("DASHBOARD_SCREENSHOT"):
        await page.screenshot(path=shot, full_page=True)
    await page.close()


async def _rollouts_as_timelines(page: Page, service: Service) -> None:
    """The rollout panel: each rollout's stages as a timeline, where it is,
    why it moved, and its moves."""
    plan = {"category": "USER_ACTIVITY", "steps": [1, 50, 100], "hold_s": 60, "cutover": True}
    assert (await service.client.post("/rollouts", json=plan)).status_code == 201
    await expect(page.get_by_test_id("rollout-state-1")).to_have_text("running")
    await expect(page.get_by_test_id("rollout-step-1")).to_contain_text("step 1 of 4 · 1 %")
    stage = page.get_by_test_id
    await expect(stage("rollout-stage-1-1")).to_have_attribute("data-stage", "current")
    await expect(stage("rollout-stage-1-2")).to_have_attribute("data-stage", "todo")
    await expect(stage("rollout-stage-1-4")).to_have_text("cutover")
    await expect(page.get_by_test_id("rollout-reason-1")).to_have_text("started by ops")
    await expect(page.get_by_test_id("flag-percentage-USER_ACTIVITY")).to_have_text("1")
    await expect(page.get_by_test_id("audit-list")).to_contain_text("rollout:1")

    # A gate failed at the second step: the timeline shows where, the reason why.
    first = policy.start(
        Plan("SYSTEM", "realtime", (10, 100), 60_000, Gates()),
        now_ms=1_000,
        from_sequence_id=0,
        start_flags={"enabled": True, "percentage": 100, "adapters": [], "cutover": False},
        by="ops",
    ).rollout
    second = replace(first, stage=1)
    failed = policy.evaluate(
        second,
        StageHealth(missing=3),
        now_ms=2_000,
        watched_since_ms=None,
        last_sequence_id=0,
        by="rollout:2",
    ).rollout
    store = service.b.store
    row = (await store.create_rollout("SYSTEM", second.as_doc())).row
    await store.save_rollout(row.id, failed.as_doc(), state="rolled_back", version=row.version)
    await expect(page.get_by_test_id("rollout-state-2")).to_have_text("rolled_back")
    await expect(stage("rollout-stage-2-1")).to_have_attribute("data-stage", "done")
    await expect(stage("rollout-stage-2-2")).to_have_attribute("data-stage", "failed")
    await expect(page.get_by_test_id("rollout-reason-2")).to_have_text(
        "3 events missing on realtime > 0"
    )
    await expect(page.get_by_test_id("rollout-moves-2")).to_contain_text("rollback")

    # Paused, then aborted from the API: the page follows.
    await service.client.post("/rollouts/1/pause")
    await expect(page.get_by_test_id("rollout-state-1")).to_have_text("paused")
    await service.client.post("/rollouts/1/abort")
    await expect(page.get_by_test_id("rollout-state-1")).to_have_text("aborted")
    await expect(page.get_by_test_id("flag-percentage-USER_ACTIVITY")).to_have_text("0")


async def test_dashboard_shows_401_for_a_wrong_token_and_recovers_with_the_right_one(
    service: Service, browser: Browser
) -> None:
    page = await browser.new_page()
    page.set_default_timeout(WAIT_MS)
    console = Console()
    console.watch(page)
    error = page.get_by_test_id("error")

    # No token at all: the page asks for one instead of calling the API.
    await page.goto(f"{service.url}/dashboard")
    await expect(error).to_contain_text("401 Unauthorized: no admin token given")
    await expect(page.get_by_test_id("token-form")).to_be_visible()
    await expect(page.get_by_test_id("health-status")).to_have_text("ok")

    await page.goto(f"{service.url}/dashboard#token=not-the-token")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("401 Unauthorized")
    await expect(error).to_contain_text("token was rejected")
    await expect(page.get_by_test_id("published-CRITICAL")).to_have_count(0)
    await expect(page.get_by_test_id("last-updated")).to_have_text("never")

    # The token input takes the right one: the page comes alive.
    await expect(page.get_by_test_id("token-form")).to_be_visible()
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("token-save").click()
    await expect(error).to_be_hidden()
    await _wait_above(page, "published-CRITICAL", 0)
    await expect(page.get_by_test_id("breaker-websocket")).to_have_text("closed")
    await expect(page.get_by_test_id("token-form")).to_be_hidden()
    # The refused requests are the only console errors (the browser logs each).
    assert console.errors, "the 401 responses should have been logged"
    assert all("status of 401" in e for e in console.errors), console.errors
    await page.close()
