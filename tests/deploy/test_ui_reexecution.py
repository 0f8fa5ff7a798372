"""Re-execution from failure in the Dagster UI, as a person does it: `dagster dev` on the code
location (its own DAGSTER_HOME, an SQLite agent database, a frozen KV-starved simulated fleet), a
cycle whose second step fails because the `bottleneck_reports` table is away (renamed, as a
restore would), the table put back, then headless Chromium opens the failed run and clicks
"Re-execute" → "From failure". The new run must succeed without scraping again and publish the
advice under its own run id, resting on the failed run's snapshots.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from sqlalchemy import select, text

from perf_lab.simulator.fleet import Fleet
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import kv_pressure, targets_for
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.schema import metric_snapshots as snapshots_table
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from tests.deploy.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, UI_TIMEOUT_MS
from tests.support.topology import ROOT

pytestmark = [pytest.mark.slow]

T = TypeVar("T")
RUNS_QUERY = """query { runsOrError(limit: 20) { ... on Runs { results {
  runId status jobName tags { key value } } } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
_BIND = ("-h", "127.0.0.1", "-p")
LOCATIONS = """query { workspaceOrError { ... on Workspace { locationEntries { name } } } }"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.5)


class _Ui:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        answer = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        answer.raise_for_status()
        body = answer.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def runs(self) -> list[dict[str, Any]]:
        return list(self.graphql(RUNS_QUERY)["runsOrError"]["results"])

    def up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"dagster dev exited:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/server_info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[_Ui, str]]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (Debian package chromium)")
    pytest.importorskip("playwright.sync_api")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # No first-visit newsletter prompt: its backdrop once covered the re-execute menu for 45 s.
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    database_url = f"sqlite:///{tmp_path / 'perf.db'}"
    specs = kv_pressure()
    fleet = Fleet(specs, virtual=True, speed=4.0, seed=7)
    fleet.advance(120)  # then frozen: every scrape reads the same KV-starved server
    with run_fleet_in_thread(fleet) as base_url:
        targets = tmp_path / "targets.yaml"
        targets.write_text(yaml.safe_dump(targets_for(specs, base_url)))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PERF_"))},
            "DAGSTER_HOME": str(home),
            "DATABASE_URL": database_url,
            "PERF_TARGETS": str(targets),
            "SCRAPE_SAMPLES": "3",
            "SCRAPE_INTERVAL_S": "4.5",  # MIN_SPAN_S of history within the one run
            "DETECTION_MIN_SUSTAINED_S": "4",
            # No scheduled run while the test drives the UI.
            "OPTIMIZATION_CYCLE_CRON": "0 0 1 1 *",
            "HEALTH_CHECK_CRON": "0 0 1 1 *",
        }
        port = _free_port()
        log = tmp_path / "dagster-dev.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    ROOT / ".venv/bin/dagster",
                    "dev",
                    "-m",
                    "perf_pipelines.definitions",
                    *_BIND,
                    str(port),
                ],
                env=env,
                cwd=tmp_path,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ui = _Ui(f"http://127.0.0.1:{port}", process, log)
        try:
            _wait("Dagster webserver", ui.up, 180)
            yield ui, database_url
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # dagster dev and the processes it started
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _rename(database_url: str, old: str, new: str) -> None:
    engine = create_db_engine(database_url)
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    engine.dispose()


def test_re_execute_from_failure_in_the_ui_publishes_the_advice(ui: tuple[_Ui, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    dagster, database_url = ui
    _rename(database_url, "bottleneck_reports", "bottleneck_reports_under_restore")
    (location,) = dagster.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    launched = dagster.graphql(
        LAUNCH,
        {
            "p": {
                "selector": {
                    "repositoryLocationName": location["name"],
                    "repositoryName": "__repository__",
                    "pipelineName": "optimization_cycle",
                },
                "runConfigData": {},
            }
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    failed_run = launched["run"]["runId"]
    _wait(
        "the cycle to fail",
        lambda: any(r["runId"] == failed_run and r["status"] == "FAILURE" for r in dagster.runs()),
        240,
    )
    _rename(database_url, "bottleneck_reports_under_restore", "bottleneck_reports")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            page.goto(f"{dagster.url}/runs/{failed_run}")
            expect(page.get_by_text("Failure", exact=True).first).to_be_visible()
            # The arrow beside "Re-execute all (*)" opens the menu.
            page.locator("button:right-of(button:has-text('Re-execute all'))").first.click()
            page.get_by_text("From failure", exact=True).click()
            parent = {"key": "dagster/parent_run_id", "value": failed_run}
            rerun = _wait(
                "the re-execution to finish",
                lambda: next(
                    (
                        r
                        for r in dagster.runs()
                        if parent in r["tags"] and r["status"] in ("SUCCESS", "FAILURE")
                    ),
                    None,
                ),
                240,
            )
            page.goto(f"{dagster.url}/runs/{rerun['runId']}")
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "re-executed-from-failure.png"))
        finally:
            browser.close()

    assert rerun["status"] == "SUCCESS", rerun
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        advice = connection.execute(
            select(
                recommendations_table.c.run_id,
                recommendations_table.c.engine_flag,
                recommendations_table.c.current_value,
            )
        ).all()
        scraped_by = set(connection.execute(select(snapshots_table.c.run_id).distinct()).scalars())
    engine.dispose()
    assert scraped_by == {failed_run}  # the re-execution rests on the failed run's scrape
    assert ("--gpu-memory-utilization", "0.56") in {
        (a.engine_flag, a.current_value) for a in advice
    }
    assert {a.run_id for a in advice} == {rerun["runId"]}, advice
