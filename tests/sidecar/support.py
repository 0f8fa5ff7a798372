"""Helpers for the sidecar tests: a server in a thread, settings, rows to insert."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from perf_pipelines.serving import HttpLimits, limited_config, serve_in_thread
from perf_pipelines.settings import Settings

AGENT_ID = "perf-test-agent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(**overrides: Any) -> Settings:
    """Settings independent of the caller's environment and `.env` for what the sidecar reads."""
    values: dict[str, Any] = {
        "agent_id": AGENT_ID,
        "orchestrator_url": None,
        "orchestrator_token": None,
        "redis_url": None,
        "perf_targets": None,
        "optimization_cycle_cron": "*/5 * * * *",
        "orchestrator_heartbeat_interval": 30.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve `app` on a free loopback port in a thread, with the server limits the CLI sets
    (default HttpLimits); yields the base URL."""
    config = limited_config(
        app, "127.0.0.1", 0, HttpLimits(), log_config=None, access_log=False, lifespan="on"
    )
    with serve_in_thread(config, "sidecar") as url:
        yield url


def snapshot(
    run_id: str,
    target: str,
    collected_at: datetime,
    *,
    up: bool = True,
    error: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "sample_index": index,
        "target": target,
        "engine": "vllm",
        "model": "llama" if up else None,
        "collected_at": collected_at,
        "up": up,
        "error": error,
        "requests_running": 4.0 if up else None,
    }


def report(
    run_id: str, target: str, created_at: datetime, kind: str, severity: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "created_at": created_at,
        "target": target,
        "engine": "vllm",
        "model": "llama",
        "window_start": created_at - timedelta(minutes=15),
        "window_end": created_at,
        "kind": kind,
        "severity": severity,
        "score": 0.7,
        "evidence": {"kv_usage_mean": 0.97},
        "summary": f"{kind} on {target}",
    }


def recommendation(
    rec_id: str,
    *,
    status: str = "open",
    capability: str = "kv_cache_optimization",
    severity: str = "warning",
    parameter: str | None = None,
    target: str = "vllm-a",
    outcome: str | None = None,
    at: datetime,
) -> dict[str, Any]:
    return {
        "id": rec_id,
        "created_at": at,
        "last_seen_at": at,
        "run_id": "a-new",
        "target": target,
        "engine": "vllm",
        "model": "llama",
        "capability": capability,
        "parameter": parameter or f"param-{rec_id}",
        "engine_flag": "--gpu-memory-utilization",
        "current_value": "0.85",
        "recommended_value": "0.92",
        "rationale": "KV cache full",
        "evidence": {"kv_usage_mean": 0.97, "preemptions_per_s": 3.1},
        "expected_effect": "KV cache +8 GiB",
        "confidence": 0.8,
        "severity": severity,
        "status": status,
        "outcome": outcome,
        "status_changed_at": at,
    }


def event(
    occurred_at: datetime,
    kind: str,
    success: bool,
    *,
    agent_id: str = AGENT_ID,
    status_code: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "occurred_at": occurred_at,
        "agent_id": agent_id,
        "kind": kind,
        "success": success,
        "status_code": status_code,
        "latency_ms": 3.0,
        "error": error,
    }


def health_row(checked_at: datetime, dagster_status: str = "ok") -> dict[str, Any]:
    """An `agent_health` row as the `health_check` job writes it (its `dagster` component)."""
    dagster = {
        "status": dagster_status,
        "detail": "last successful optimization_cycle 42s ago",
        "latency_ms": None,
        "data": {"last_run_status": "SUCCESS", "stale_after_s": 720.0},
    }
    return {
        "checked_at": checked_at,
        "run_id": "h-1",
        "agent_id": AGENT_ID,
        "status": "healthy" if dagster_status == "ok" else "degraded",
        "components": {"dagster": dagster},
    }


def metric_values(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


@dataclass
class Sidecar:
    url: str
    client: httpx.Client
    engine: Engine
    settings: Settings


SidecarFactory = Callable[..., Sidecar]
