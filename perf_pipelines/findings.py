"""What the agent finds and advises: bottleneck reports and tuning recommendations.

These records are the data model shared by the rules that make them (analysis,
recommendations), the tables that keep them (storage) and the lab that scores them; they sit
below all of those so that none has to import another to know their shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class BottleneckReport:
    target: str
    engine: str | None
    model: str | None
    window_start: datetime
    window_end: datetime
    kind: str
    severity: str  # info | warning | critical
    score: float  # 0..1
    evidence: dict[str, Any]
    summary: str

    def as_record(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "engine": self.engine,
            "model": self.model,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "kind": self.kind,
            "severity": self.severity,
            "score": round(self.score, 4),
            "evidence": self.evidence,
            "summary": self.summary,
        }


@dataclass
class Recommendation:
    target: str
    engine: str
    model: str | None
    capability: str
    parameter: str
    engine_flag: str
    current_value: Any
    recommended_value: Any
    rationale: str
    evidence: dict[str, Any]
    expected_effect: str | None
    confidence: float
    severity: str
    report_kind: str
    direction: str = ""  # "raise" | "lower" | "change": used to keep advice consistent
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = recommendation_id(self.target, self.model, self.parameter, self.recommended_value)


def recommendation_id(target: str, model: str | None, parameter: str, value: Any) -> str:
    """Deterministic: the same advice for the same target gets the same id in every cycle."""
    digest = hashlib.sha256(
        f"{target}\x1f{model or ''}\x1f{parameter}\x1f{value}".encode()
    ).hexdigest()
    return f"rec-{digest[:24]}"
