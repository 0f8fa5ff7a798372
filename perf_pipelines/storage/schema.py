"""The tables an orchestrator reads. Column names here are the contract of DESIGN.md.

Histograms are JSON objects ``{"bounds": [...], "cumulative": [...], "sum": s, "count": n}``
(cumulative bucket counts, the last one being +Inf) so quantiles can be computed from deltas.
Every timestamp is timezone-aware UTC, also on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.types import TypeDecorator

from perf_pipelines.engines.canonical import CANONICAL_VALUE_FIELDS, HISTOGRAM_FIELDS

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC and always returns an aware datetime (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# What each canonical column holds; `Column.doc` carries it, so the Dagster catalog's column
# schema (dagster_defs/catalog.py) is read from these tables. `doc` renders no SQL comment: no
# migration follows a change of wording.
_CANONICAL_DOCS = {
    "requests_running": "gauge: requests being processed",
    "requests_waiting": "gauge: requests queued, not yet scheduled",
    "kv_cache_usage": "gauge 0–1: share of the KV pool in use; NULL where the engine has none",
    "kv_cache_capacity_tokens": "gauge: size of the KV pool in tokens",
    "prompt_tokens_total": "counter: prompt tokens received, cached ones included",
    "generation_tokens_total": "counter: tokens generated",
    "preemptions_total": "counter: vLLM preemptions, SGLang retractions",
    "requests_finished_total": "counter: requests finished for any reason",
    "requests_failed_total": "counter: requests aborted, errored or rejected",
    "prefix_cache_queries_total": "counter: tokens looked up in the prefix cache",
    "prefix_cache_hits_total": "counter: tokens found in the prefix cache",
    "process_start_time": "Unix time the server process started, where exported (reset detection)",
    "ttft_seconds": "cumulative histogram of time to first token (seconds)",
    "itl_seconds": "cumulative histogram of inter-token latency (seconds)",
    "e2e_seconds": "cumulative histogram of end-to-end request latency (seconds)",
    "queue_seconds": "cumulative histogram of time spent queued (seconds)",
}


def column_description(column: Column[Any]) -> str | None:
    """What a column holds, for the catalog; None when schema.py says nothing."""
    return column.doc


def _float_columns() -> list[Column[Any]]:
    return [
        Column(name, Float, nullable=True, doc=_CANONICAL_DOCS[name])
        for name in CANONICAL_VALUE_FIELDS
    ]


def _histogram_columns() -> list[Column[Any]]:
    return [
        Column(name, JSON, nullable=True, doc=_CANONICAL_DOCS[name]) for name in HISTOGRAM_FIELDS
    ]


metric_snapshots = Table(
    "metric_snapshots",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True, doc="row id"),
    Column(
        "run_id",
        String(64),
        nullable=False,
        doc="Dagster run that collected the row: the batch_id of its materialization",
    ),
    Column(
        "sample_index",
        Integer,
        nullable=False,
        default=0,
        doc="scrape round within the run, from 0",
    ),
    Column("target", String(128), nullable=False, doc="target name from the targets file"),
    Column(
        "engine",
        String(16),
        nullable=True,
        doc="vllm, sglang, tgi or llamacpp, detected or from the targets file; NULL when unknown",
    ),
    Column(
        "model",
        String(512),
        nullable=True,
        doc="model from the metric labels, else from the targets file",
    ),
    Column(
        "collected_at",
        UtcDateTime,
        nullable=False,
        doc="when the scrape answered (UTC), or the Prometheus sample time",
    ),
    Column("up", Boolean, nullable=False, doc="false: the scrape failed, see error"),
    Column(
        "error",
        Text,
        nullable=True,
        doc="why the scrape failed; on an up row, values refused as outside their domain",
    ),
    Column("scrape_ms", Float, nullable=True, doc="time the scrape took, in milliseconds"),
    Column("body_bytes", Integer, nullable=True, doc="size of the /metrics body read"),
    *_float_columns(),
    *_histogram_columns(),
    Column(
        "settings",
        JSON,
        nullable=True,
        doc="current settings from info metrics, in the engine's own names",
    ),
    Column("extra", JSON, nullable=True, doc="engine-specific figures without a canonical column"),
    Index("ix_metric_snapshots_target_collected_at", "target", "collected_at"),
    Index("ix_metric_snapshots_collected_at", "collected_at"),
)

bottleneck_reports = Table(
    "bottleneck_reports",
    metadata,
    Column(
        "id",
        BigId,
        primary_key=True,
        autoincrement=True,
        doc="row id, referenced by tuning_recommendations.report_id",
    ),
    Column(
        "run_id",
        String(64),
        nullable=False,
        doc="Dagster run that wrote the report: the batch_id of its materialization",
    ),
    Column("created_at", UtcDateTime, nullable=False, doc="when the report was written (UTC)"),
    Column("target", String(128), nullable=False, doc="target name from the targets file"),
    Column("engine", String(16), nullable=True, doc="engine of the target"),
    Column("model", String(512), nullable=True, doc="model the report is about"),
    Column("window_start", UtcDateTime, nullable=False, doc="start of the analysed window (UTC)"),
    Column(
        "window_end",
        UtcDateTime,
        nullable=False,
        doc="end of the analysed window: the last sample of the snapshot batch (UTC)",
    ),
    Column(
        "kind",
        String(64),
        nullable=False,
        doc=(
            "kv_cache_pressure, preemption, queue_saturation, ttft_slo_breach, itl_slo_breach, "
            "underutilization or target_down"
        ),
    ),
    Column("severity", String(16), nullable=False, doc="info, warning or critical"),
    Column("score", Float, nullable=False, doc="0–1, how strongly and how persistently"),
    Column(
        "evidence",
        JSON,
        nullable=False,
        doc="the numbers that triggered the report, and what could not be judged",
    ),
    Column("summary", Text, nullable=False, doc="one sentence for a person"),
    Index("ix_bottleneck_reports_target_window_end", "target", "window_end"),
    # The newest report (sidecar, /metrics) on every request; migration 0002.
    Index("ix_bottleneck_reports_created_at", "created_at"),
)

tuning_recommendations = Table(
    "tuning_recommendations",
    metadata,
    # Deterministic: a hash of (target, model, parameter, recommended value), so the same advice
    # given again in a later cycle updates one row instead of adding another.
    Column(
        "id",
        String(40),
        primary_key=True,
        doc="rec- + hash of (target, model, parameter, recommended value): same advice, same id",
    ),
    Column("created_at", UtcDateTime, nullable=False, doc="first cycle that gave the advice (UTC)"),
    Column(
        "last_seen_at", UtcDateTime, nullable=False, doc="latest cycle that gave the advice (UTC)"
    ),
    Column("run_id", String(64), nullable=False, doc="Dagster run that gave the advice last"),
    Column("target", String(128), nullable=False, doc="target name from the targets file"),
    Column("engine", String(16), nullable=False, doc="engine of the target"),
    Column("model", String(512), nullable=True, doc="model the advice is for"),
    Column(
        "capability",
        String(64),
        nullable=False,
        doc="kv_cache_optimization, quantization_optimization or batch_size_tuning",
    ),
    Column(
        "parameter",
        String(64),
        nullable=False,
        doc="the engine's setting name (gpu_memory_utilization, max_num_seqs, …)",
    ),
    Column(
        "engine_flag",
        String(128),
        nullable=False,
        doc="the command-line flag to change (--gpu-memory-utilization, …)",
    ),
    Column(
        "current_value",
        Text,
        nullable=True,
        doc="the value now, read from the server or assumed (see rationale)",
    ),
    Column("recommended_value", Text, nullable=False, doc="the value to set"),
    Column("rationale", Text, nullable=False, doc="why, naming any assumed current value"),
    Column(
        "evidence",
        JSON,
        nullable=False,
        doc="the report's evidence, plus GPU and compute capability for quantization",
    ),
    Column(
        "expected_effect",
        Text,
        nullable=True,
        doc="the expected effect, quantified where it can be computed",
    ),
    Column("confidence", Float, nullable=False, doc="0–1; lower when the current value is assumed"),
    Column(
        "severity",
        String(16),
        nullable=False,
        default="warning",
        doc="severity of the report that caused the advice",
    ),
    Column(
        "report_id",
        BigInteger,
        nullable=True,
        doc="bottleneck_reports.id of the report that caused the advice",
    ),
    Column(
        "status",
        String(16),
        nullable=False,
        default="open",
        doc="open, superseded, applied, rejected or expired",
    ),
    Column(
        "outcome", String(16), nullable=True, doc="after applied: improved, no_change or regressed"
    ),
    Column(
        "outcome_evidence",
        JSON,
        nullable=True,
        doc="before/after figures and each one's verdict (without an outcome: too little data)",
    ),
    Column("status_changed_at", UtcDateTime, nullable=False, doc="when status last changed (UTC)"),
    Index("ix_tuning_recommendations_target_parameter", "target", "parameter", "status"),
    Index("ix_tuning_recommendations_status", "status"),
)

# A model-less row (a target that is down, or TGI without a model label) must still be unique per
# sample, and NULLs never collide in a unique index: hence the coalesce.
Index(
    "uq_metric_snapshots_sample",
    metric_snapshots.c.run_id,
    metric_snapshots.c.target,
    metric_snapshots.c.sample_index,
    func.coalesce(metric_snapshots.c.model, ""),
    unique=True,
)
Index(
    "uq_bottleneck_reports_run_kind",
    bottleneck_reports.c.run_id,
    bottleneck_reports.c.target,
    func.coalesce(bottleneck_reports.c.model, ""),
    bottleneck_reports.c.kind,
    unique=True,
)

agent_health = Table(
    "agent_health",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True, doc="row id"),
    Column("checked_at", UtcDateTime, nullable=False, doc="when the health check ran (UTC)"),
    Column("run_id", String(64), nullable=True, doc="Dagster run of the health_check job"),
    Column("agent_id", String(128), nullable=False, doc="AGENT_ID of the agent"),
    Column("status", String(16), nullable=False, doc="healthy, degraded or unhealthy"),
    Column(
        "components",
        JSON,
        nullable=False,
        doc="per component (database, targets, dagster, orchestrator, cache) its status and detail",
    ),
    Index("ix_agent_health_checked_at", "checked_at"),
)

orchestrator_events = Table(
    "orchestrator_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True, doc="row id"),
    Column("occurred_at", UtcDateTime, nullable=False, doc="when the attempt was made (UTC)"),
    Column("agent_id", String(128), nullable=False, doc="AGENT_ID of the agent"),
    Column("kind", String(32), nullable=False, doc="register or heartbeat"),
    Column("success", Boolean, nullable=False, doc="whether the orchestrator accepted it"),
    Column(
        "status_code", Integer, nullable=True, doc="HTTP status of the answer; NULL when none came"
    ),
    Column("latency_ms", Float, nullable=True, doc="time to the answer, in milliseconds"),
    Column("error", Text, nullable=True, doc="why the attempt failed, token redacted"),
    Column(
        "detail",
        JSON,
        nullable=True,
        doc=(
            "the path called and what was sent (status and summary, or registration), with "
            "the failures so far and the next retry"
        ),
    ),
    Index("ix_orchestrator_events_occurred_at", "occurred_at"),
    # This agent's latest attempt, and failures per kind, on every health request; migration 0002.
    Index("ix_orchestrator_events_agent_occurred_at", "agent_id", "occurred_at"),
    Index("ix_orchestrator_events_success_kind", "success", "kind"),
)

RECOMMENDATION_STATUSES = ("open", "superseded", "applied", "rejected", "expired")
RECOMMENDATION_OUTCOMES = ("improved", "no_change", "regressed")
SEVERITIES = ("info", "warning", "critical")

# The newest open recommendation per (target, parameter). Ties on created_at break on id so the
# view is deterministic on both SQLite and PostgreSQL.
OPEN_RECOMMENDATIONS_VIEW_SQL = """
CREATE VIEW open_recommendations AS
SELECT r.*
FROM tuning_recommendations AS r
WHERE r.status = 'open'
  AND NOT EXISTS (
    SELECT 1 FROM tuning_recommendations AS n
    WHERE n.status = 'open'
      AND n.target = r.target
      AND n.parameter = r.parameter
      AND (n.created_at > r.created_at OR (n.created_at = r.created_at AND n.id > r.id))
  )
"""
