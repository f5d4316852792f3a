"""Ops can see what the service does in the Temporal UI: a PO submitted over the API is found by
filtering on its partner, with its summary and what it waits for, in words.

A real browser: Debian's chromium at /usr/bin/chromium (`make install` installs it where it is
root and has apt-get), driven by Playwright's Python package, never a browser it downloads.
The screenshot is kept in test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import ARTIFACTS, Stack, TemporalServer, eventually
from tests.helpers import submit

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches outside this machine.
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
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; missing is a failure, never a skip: this test is how we know ops can
    see the service."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`make install` does, as root "
            "with apt-get; or `apt-get install chromium`)"
        )
    return CHROMIUM


async def test_ops_find_a_po_by_partner_id_with_its_summary(
    stack: Stack, temporal_server: TemporalServer, chromium: Path
) -> None:
    if stack.db != "sqlite":
        pytest.skip("the UI reads Temporal, not our store: one database is enough")
    partner = f"p-ui-{uuid.uuid4().hex[:8]}"
    admin = stack.auth("ops-1", ["ops_admin"])
    r = await stack.http.put(
        f"/v1/admin/partners/{partner}",
        json={"name": "UI Check Cloud", "kind": "solution_provider", "region": "north-china"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    po = await submit(
        stack.http, stack.auth("u-ui-1", ["partner_admin"], partner), region="north-china"
    )
    assert po["assignee"] == "pdm-wang", po
    query = f'PartnerId="{partner}"'

    async def listed() -> bool:
        return any([w.id async for w in stack.client.list_workflows(query)])

    await eventually(listed, timeout=30, what=f"{po['id']} in Temporal's visibility")

    summary = f"PO {po['customer_name']} / {po['project_name']} from {partner}"
    namespace = stack.settings.temporal_namespace
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        page = await browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            await page.goto(
                f"{temporal_server.ui_url}/namespaces/{namespace}/workflows?query={quote(query)}"
            )
            execution = page.get_by_role("link", name=po["id"], exact=True)
            await expect(execution).to_be_visible(timeout=UI_TIMEOUT_MS)
            await page.screenshot(path=str(ARTIFACTS / "temporal-ui-partner-filter.png"))
            await execution.click()
            await page.get_by_text("User Metadata", exact=True).click()
            # The UI renders the summary and the current details (markdown) in two iframes.
            frames = page.locator("iframe")
            await expect(frames).to_have_count(2, timeout=UI_TIMEOUT_MS)
            await expect(frames.nth(0).content_frame.get_by_text(summary)).to_be_visible(
                timeout=UI_TIMEOUT_MS
            )
            details = frames.nth(1).content_frame.get_by_text("waiting for PDM pdm-wang to review")
            await expect(details).to_be_visible(timeout=UI_TIMEOUT_MS)
        finally:
            await page.screenshot(path=str(ARTIFACTS / "temporal-ui-po-summary.png"))
            await browser.close()
