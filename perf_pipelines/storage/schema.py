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


def _float_columns() -> list[Column[Any]]:
    return [Column(name, Float, nullable=True) for name in CANONICAL_VALUE_FIELDS]


def _histogram_columns() -> list[Column[Any]]:
    return [Column(name, JSON, nullable=True) for name in HISTOGRAM_FIELDS]


metric_snapshots = Table(
    "metric_snapshots",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("sample_index", Integer, nullable=False, default=0),
    Column("target", String(128), nullable=False),
    Column("engine", String(16), nullable=True),
    Column("model", String(512), nullable=True),
    Column("collected_at", UtcDateTime, nullable=False),
    Column("up", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Column("scrape_ms", Float, nullable=True),
    Column("body_bytes", Integer, nullable=True),
    *_float_columns(),
    *_histogram_columns(),
    Column("settings", JSON, nullable=True),
    Column("extra", JSON, nullable=True),
    Index("ix_metric_snapshots_target_collected_at", "target", "collected_at"),
    Index("ix_metric_snapshots_collected_at", "collected_at"),
)

bottleneck_reports = Table(
    "bottleneck_reports",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("target", String(128), nullable=False),
    Column("engine", String(16), nullable=True),
    Column("model", String(512), nullable=True),
    Column("window_start", UtcDateTime, nullable=False),
    Column("window_end", UtcDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("score", Float, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("summary", Text, nullable=False),
    Index("ix_bottleneck_reports_target_window_end", "target", "window_end"),
    # The newest report (sidecar, /metrics) on every request; migration 0002.
    Index("ix_bottleneck_reports_created_at", "created_at"),
)

tuning_recommendations = Table(
    "tuning_recommendations",
    metadata,
    # Deterministic: a hash of (target, model, parameter, recommended value), so the same advice
    # given again in a later cycle updates one row instead of adding another.
    Column("id", String(40), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("target", String(128), nullable=False),
    Column("engine", String(16), nullable=False),
    Column("model", String(512), nullable=True),
    Column("capability", String(64), nullable=False),
    Column("parameter", String(64), nullable=False),
    Column("engine_flag", String(128), nullable=False),
    Column("current_value", Text, nullable=True),
    Column("recommended_value", Text, nullable=False),
    Column("rationale", Text, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("expected_effect", Text, nullable=True),
    Column("confidence", Float, nullable=False),
    Column("severity", String(16), nullable=False, default="warning"),
    Column("report_id", BigInteger, nullable=True),
    Column("status", String(16), nullable=False, default="open"),
    Column("outcome", String(16), nullable=True),
    Column("outcome_evidence", JSON, nullable=True),
    Column("status_changed_at", UtcDateTime, nullable=False),
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
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("checked_at", UtcDateTime, nullable=False),
    Column("run_id", String(64), nullable=True),
    Column("agent_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("components", JSON, nullable=False),
    Index("ix_agent_health_checked_at", "checked_at"),
)

orchestrator_events = Table(
    "orchestrator_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("agent_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("detail", JSON, nullable=True),
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
