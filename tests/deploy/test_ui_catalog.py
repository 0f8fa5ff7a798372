"""The Dagster catalog of the native topology in a real browser (headless Chromium, as in
test_ui_browser.py): a table asset's page shows its columns with their descriptions, its owner,
its row count and its freshness; the health group's lineage shows where the orchestrator link
reads and writes (`orchestrator_events` between the cycle's tables and `agent_health`).
Read-only: it changes nothing the other topology tests count."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.test_ui_browser import _shoot, page  # noqa: F401  (the browser fixture)
from tests.support.topology import NativeTopology

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_table_asset_shows_its_catalog_entry(topology: NativeTopology, page: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    topology.first_successful_cycle()
    page.goto(f"{topology.webserver_url}/assets/tuning_recommendations")
    # The column schema, read from storage/schema.py, with each column's description.
    columns = page.locator("table", has=page.get_by_text("Column name", exact=True)).first
    row = columns.locator("tr", has=page.get_by_text("engine_flag", exact=True))
    expect(row).to_contain_text("the command-line flag to change")
    expect(row).to_contain_text("varchar(128)")
    # Row count of the latest materialization, the owner (the UI drops "team:"), the policy
    # matched to the topology's every-minute cycle (two gaps plus two minutes).
    expect(page.get_by_text("Row count", exact=True).first).to_be_visible()
    expect(page.get_by_text("Owners", exact=True).first).to_be_visible()
    expect(page.get_by_text("perf-pipelines", exact=True).first).to_be_visible()
    expect(
        page.get_by_text("Fails if more than 4 minutes since last materialization")
    ).to_be_visible()
    page.set_viewport_size({"width": 1600, "height": 2000})
    _shoot(page, "catalog-tuning-recommendations.png")


def test_lineage_shows_the_orchestrator_link(topology: NativeTopology, page: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    topology.first_successful_cycle()
    page.goto(f"{topology.webserver_url}/locations/perf_pipelines/asset-groups/health/lineage")
    for asset in ("orchestrator_events", "agent_health"):
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    _shoot(page, "lineage-health.png")
