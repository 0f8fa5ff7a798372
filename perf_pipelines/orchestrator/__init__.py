"""Orchestrator protocol: register once, then heartbeat; back off when the orchestrator is away.

Plain Python (httpx, SQLAlchemy Core), no Dagster: the `orchestrator_heartbeat` sensor in
`perf_pipelines.dagster_defs.sensors` is a thin wrapper that keeps `HeartbeatState` in its cursor.

- `client`: the HTTP client (httpx) and one attempt's record;
- `heartbeat`: payloads, back-off and one sensor tick;
- `events`: the `orchestrator_events` table and what its latest rows say.

Nothing is re-exported here: the health checks (and so the sidecar) read `events` without
loading the HTTP client (httpx and what it pulls in: ~5 MiB of the sidecar's memory).
"""
