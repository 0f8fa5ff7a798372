"""Turn scrape rounds into `metric_snapshots` rows (one per target × model × sample)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from perf_pipelines.collection.collector import ScrapeResult
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.logs import redact_and_clip
from perf_pipelines.storage.snapshots import SnapshotRow


def _rejected(snapshot: CanonicalSnapshot) -> str | None:
    """An up row's `error`: the values refused as outside their domain, and why (they are
    NULL in the row); None when every value was kept. Our own field names and numbers only,
    nothing the server wrote as text: no secret to redact."""
    if not snapshot.rejected:
        return None
    return redact_and_clip("values rejected: " + "; ".join(snapshot.rejected), 500)


def rows_from_rounds(run_id: str, rounds: Sequence[Sequence[ScrapeResult]]) -> list[SnapshotRow]:
    rows: list[SnapshotRow] = []
    for sample_index, results in enumerate(rounds):
        for result in results:
            row = partial(
                SnapshotRow,
                run_id=run_id,
                sample_index=sample_index,
                target=result.target.name,
                engine=result.engine.value if result.engine else None,
                collected_at=result.collected_at,
                scrape_ms=round(result.scrape_ms, 3),
                body_bytes=result.body_bytes,
            )
            if not result.up or not result.snapshots:
                # A body with engine metrics but no model series counts as down: nothing to analyse.
                error = result.error or "the exposition has no series for any model"
                rows.append(row(model=result.target.model, up=False, error=error, snapshot=None))
                continue
            rows.extend(
                row(model=snapshot.model, up=True, error=_rejected(snapshot), snapshot=snapshot)
                for snapshot in result.snapshots
            )
    return rows
