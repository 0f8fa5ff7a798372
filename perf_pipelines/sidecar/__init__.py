"""The sidecar HTTP service: liveness and health, the agent's own /metrics, and the
orchestrator's answers to recommendations (`perf-pipelines sidecar`).

`app.create_app` builds it from the routers in `routes/`; docs/sidecar.md, "Code layout".
"""
