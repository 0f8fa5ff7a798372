"""perf_pipelines: a performance agent for LLM inference fleets, built as Dagster pipelines."""

__version__ = "0.1.0"
