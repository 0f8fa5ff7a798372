"""The Dagster UI of the native topology, as a person sees it: headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright; nothing is downloaded) opens the asset graph, the runs
and the latest `tuning_recommendations` materialization, checks that the advice table is
rendered, and saves screenshots to .artifacts/screenshots/ (ignored by git). `make screenshots`
runs it with PERF_SCREENSHOTS_DIR=docs/screenshots to refresh the ones docs/deploy.md shows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.topology import ROOT, NativeTopology

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHROMIUM = Path("/usr/bin/chromium")
# As root, without a GPU, and without any traffic of the browser's own (updates, sync, QUIC).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A test run never rewrites committed files; only `make screenshots` points this at docs/.
SCREENSHOTS = Path(os.environ.get("PERF_SCREENSHOTS_DIR") or ROOT / ".artifacts" / "screenshots")
UI_TIMEOUT_MS = 45_000  # a 2-core machine running the whole topology renders slowly


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":  # CI installs both (scripts/test.sh): never skip there
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page(topology: NativeTopology) -> Iterator[Any]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable("chromium is not installed (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(
                viewport={"width": 1600, "height": 1000}, locale="en-US", timezone_id="UTC"
            )
            context.set_default_timeout(UI_TIMEOUT_MS)
            # expect() has its own 5 s default, which the asset graph's per-node status loading
            # exceeded once under CI load ("Loading…" still shown).
            expect.set_options(timeout=UI_TIMEOUT_MS)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def _between_cycles(topology: NativeTopology) -> None:
    """Wait until no cycle is queued or running and the next tick is ≥ 15 s away, so the graph
    shows the last materialization rather than one in progress (cycles start every minute)."""

    def quiet() -> bool:
        active = [r for r in topology.api.runs("optimization_cycle") if not r.finished]
        return not active and time.time() % 60 < 45

    topology.services.wait_for("a moment between two cycles", quiet, 120, interval_s=0.5)


def _shoot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000, f"{path} looks blank"
    return path


def test_the_asset_graph_shows_the_cycle_materialized(topology: NativeTopology, page: Any) -> None:
    from playwright.sync_api import expect

    topology.first_successful_cycle()
    _between_cycles(topology)
    page.goto(f"{topology.webserver_url}/locations/perf_pipelines/asset-groups/performance/lineage")
    for asset in (
        "metric_snapshots",
        "bottleneck_reports",
        "tuning_recommendations",
        "recommendation_outcomes",
    ):
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
    _shoot(page, "asset-graph.png")

    page.goto(f"{topology.webserver_url}/runs")
    expect(page.get_by_text("optimization_cycle", exact=True).first).to_be_visible()
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    _shoot(page, "runs.png")


def test_the_latest_recommendations_table_is_rendered(topology: NativeTopology, page: Any) -> None:
    from playwright.sync_api import expect

    topology.first_successful_cycle()
    page.goto(f"{topology.webserver_url}/assets/tuning_recommendations?view=events")
    expect(page.get_by_text("Materialized in run").first).to_be_visible()
    # The newest materialization is selected; its metadata row holds the markdown, rendered
    # as an HTML table (cells, not pipes).
    row = page.locator("tr", has=page.get_by_text("recommendations_table", exact=True)).first
    expect(row).to_be_visible()
    table = row.locator("table").first
    expect(table.locator("th", has_text="flag")).to_be_visible()
    kv_row = table.locator("tr", has_text="vllm-llama70b-kv")
    expect(kv_row).to_be_visible()
    expect(kv_row.locator("td", has_text="--gpu-memory-utilization")).to_be_visible()
    expect(table.locator("td", has_text="--max-num-seqs")).to_be_visible()
    assert "| target |" not in row.inner_text()
    page.set_viewport_size({"width": 1600, "height": 1350})  # the whole table in the picture
    _shoot(page, "tuning-recommendations.png")
