"""The sidecar HTTP service: liveness and health, the agent's own /metrics, and the
orchestrator's answers to recommendations (`perf-pipelines sidecar`)."""
