"""llama.cpp's slots and context per slot read from its /props by the collector: real HTTP on
loopback, good and misbehaving /props pages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.collection.server_settings import PROPS_MAX_BYTES, props_url
from perf_pipelines.targets import Target
from tests.support.http_servers import Route, serve

EXPOSITIONS = Path(__file__).parent.parent / "fixtures" / "expositions"
LLAMACPP = (EXPOSITIONS / "llamacpp_current.txt").read_bytes()
LIMITS = ScrapeLimits(timeout_s=1.0, concurrency=4, max_bytes=1024 * 1024)
PROPS = {"total_slots": 4, "default_generation_settings": {"n_ctx": 8192, "params": {}}}


def _json(value: object) -> Route:
    return Route(body=json.dumps(value).encode(), content_type="application/json; charset=utf-8")


def _scrape(
    props: Route | None, prefix: str = "", samples: int = 1
) -> tuple[list[list[ScrapeResult]], dict[str, int]]:
    routes = {f"{prefix}/metrics": Route(body=LLAMACPP)}
    if props is not None:
        routes[f"{prefix}/props"] = props
    with serve(routes) as server:
        target = Target(name="l", url=f"{server.base_url}{prefix}/metrics", engine="auto")
        rounds = asyncio.run(collect([target], LIMITS, samples=samples))
        hits = dict(server.hits)
    for results in rounds:
        assert results[0].up, results[0].error
    return rounds, hits


def test_slots_and_context_per_slot_come_from_props() -> None:
    ((result,),), _ = _scrape(_json(PROPS))
    (snapshot,) = result.snapshots
    assert snapshot.settings == {"parallel": 4, "ctx_per_slot": 8192}
    assert snapshot.rejected == []


def test_props_is_read_once_per_run_beside_a_path_prefix() -> None:
    rounds, hits = _scrape(_json(PROPS), prefix="/llama-a", samples=3)
    assert [r[0].snapshots[0].settings["parallel"] for r in rounds] == [4, 4, 4]
    assert hits == {"/llama-a/metrics": 3, "/llama-a/props": 1}
    assert props_url("http://h:1/llama-a/metrics") == "http://h:1/llama-a/props"


def test_a_server_without_props_leaves_settings_to_the_targets_file() -> None:
    ((result,),), _ = _scrape(None)
    (snapshot,) = result.snapshots
    assert snapshot.settings == {} and snapshot.rejected == []


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (Route(status=500, body=b"boom"), "settings not read from /props: HTTP 500"),
        (Route(body=b"{not json", content_type="application/json"), "not JSON (JSONDecodeError)"),
        (
            Route(body=b"x" * (PROPS_MAX_BYTES + 1), content_type="application/json"),
            f"body of {PROPS_MAX_BYTES + 1} bytes exceeds the {PROPS_MAX_BYTES}-byte cap",
        ),
        (Route(hang=True), "settings not read from /props: timeout after 1s"),
        (_json([1, 2]), "/props is not a JSON object (list)"),
        (
            _json({"total_slots": -3, "default_generation_settings": {"n_ctx": 4096}}),
            "/props total_slots '-3' is not a count in 1–65536",
        ),
        (
            _json({"total_slots": True, "default_generation_settings": {"n_ctx": 1e300}}),
            "/props default_generation_settings.n_ctx '1e+300' is not a count",
        ),
    ],
    ids=["http-500", "not-json", "too-big", "hangs", "not-object", "negative", "absurd"],
)
def test_bad_props_is_a_recorded_reason_and_the_row_stays_up(route: Route, reason: str) -> None:
    ((result,),), _ = _scrape(route)
    (snapshot,) = result.snapshots
    assert result.up and snapshot.requests_running == 4  # /metrics values kept
    assert any(reason in problem for problem in snapshot.rejected), snapshot.rejected
    assert "parallel" not in snapshot.settings or snapshot.settings["parallel"] > 0
