"""Read the canonical series of each target from Prometheus instead of scraping it.

The rows are the ones direct scraping stores: Prometheus keeps every scraped sample as it was
read, so the series of one target at one instant are rebuilt into the same `MetricFamily`
structure the exposition parser produces and handed to the same engine adapters
(`perf_pipelines.engines`). Gauges come out as values, counters as their raw cumulative values
(a restart shows as a drop, as when scraping), histograms as cumulative bucket counts per `le`,
info metrics as settings.

Which series belong to a target (label matching):
1. Prometheus' active targets (`/api/v1/targets`): the ones whose scrape URL is the target's URL
   give the exact `job`s and `instance` (and the target labels to strip before mapping).
2. Otherwise `instance="<host>:<port>"` of the target URL (any job). Several jobs on one
   instance whose series differ are ambiguous and reported as such rather than mixed.

One server scraped several times (by two jobs, or by two HA replicas behind one query endpoint)
is counted once: series are grouped by who scraped them (the PROMETHEUS_DEDUP_LABELS, `job`
and replica labels) and one scrape is taken per step, the freshest that worked; the others are
copies of it, not more of the server.

What Prometheus says is taken for the server's state only when it is current: a step whose
scrape is older than STALE_AFTER_INTERVALS scrape intervals is stale (a target removed, then
Prometheus restarted: no staleness markers, so queries return its last sample for 5 minutes).
A target without current samples, or whose query failed, is *unknown*, not down: no row.

Every query also asks for `up`, `scrape_duration_seconds` and `timestamp(up)`: a row is stamped
with the time of the scrape its values come from (not the evaluation step), two steps that land
on the same scrape become one row, `up == 0` becomes a down row, and `scrape_ms` is the duration
of Prometheus' own scrape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from perf_pipelines.collection.collector import ScrapeResult
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.engines import detect_engine, to_canonical, wanted_families
from perf_pipelines.engines.canonical import CanonicalSnapshot, Engine
from perf_pipelines.engines.exposition import MetricFamily, Sample
from perf_pipelines.logs import redact_and_clip
from perf_pipelines.sources.promapi import (
    ApiResult,
    PrometheusClient,
    PrometheusConfig,
    PrometheusError,
)
from perf_pipelines.storage.snapshots import SnapshotRow
from perf_pipelines.targets import Target

log = logging.getLogger(__name__)

# `timestamp(up)` comes back tagged with this label. Not through `__name__`: `or` matches label
# sets without the metric name, so a renamed copy of `up{...}` would be dropped as a duplicate.
TAG_LABEL, TAG_VALUE = "perf_pipelines_series", "scrape_timestamp"
_META_NAMES = ("up", "scrape_duration_seconds")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_NAME_OK = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\])")
_DISPLAY = {
    Engine.VLLM: "vLLM",
    Engine.SGLANG: "SGLang",
    Engine.TGI: "TGI",
    Engine.LLAMACPP: "llama.cpp",
}
# History is read in chunks of this many steps: bounded responses, and a fixed grid of chunks
# (aligned to the Unix epoch) whose run ids are the same whenever the same history is read.
BACKFILL_CHUNK_STEPS = 120
DEFAULT_STEP_S = 1.0
# A step's scrape older than this many scrape intervals is not the target's current state. One
# interval is normal, a second covers a scrape in progress or late on a busy Prometheus (a failed
# scrape still writes `up` = 0 with its own timestamp, so a working Prometheus never has gaps).
STALE_AFTER_INTERVALS = 3
# Prometheus' default scrape_interval: the staleness yardstick when no interval is known.
DEFAULT_SCRAPE_INTERVAL_S = 60.0


# -- PromQL text --------------------------------------------------------------------------------


def _quote(value: str) -> str:
    """A PromQL double-quoted string literal's content."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _regex_escape(text: str) -> str:
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def names_pattern(keys: Iterable[str]) -> str:
    """RE2 pattern for every series name of the given family keys (histogram suffixes too)."""
    names = sorted(set(keys))
    bad = [name for name in names if not _NAME_OK.match(name)]
    if bad:
        raise ValueError(f"not metric names: {bad[:3]}")
    suffixes = "|".join(s.lstrip("_") for s in _HISTOGRAM_SUFFIXES)
    return f"(?:{'|'.join(names)})(?:_(?:{suffixes}))?|{'|'.join(_META_NAMES)}"


@dataclass(frozen=True)
class Selector:
    """The label matchers that pick one target's series out of Prometheus."""

    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)
    drop_labels: frozenset[str]  # labels Prometheus attached (job, instance, ...): not the engine's
    by_scrape_url: bool  # matched through /api/v1/targets (exact) or by instance only
    scrape_interval_s: float | None = None
    last_error: str | None = None  # Prometheus' current lastError for the target, if any

    def promql(self) -> str:
        return ",".join(f'{label}{op}"{_quote(value)}"' for label, op, value in self.matchers)

    def describe(self) -> str:
        return "{" + self.promql() + "}"


def series_query(selector: Selector, keys: Iterable[str]) -> str:
    """Every series an adapter may read for the target, plus `up`, scrape duration and time."""
    where = selector.promql()
    return (
        f'{{__name__=~"{_quote(names_pattern(keys))}",{where}}} or label_replace('
        f'timestamp(up{{{where}}}), "{TAG_LABEL}", "{TAG_VALUE}", "", ".*")'
    )


# -- matching targets to series -------------------------------------------------------------


def _normalized_url(url: str) -> tuple[str, str, int, str, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    return (parts.scheme.lower(), host, port, parts.path or "/", parts.query)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_TEXT = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+")
_DURATION_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}


def parse_duration(text: str | None) -> float | None:
    """Prometheus duration text ('15s', '1m30s') in seconds; None when not one."""
    if not text or not _DURATION_TEXT.fullmatch(text):
        return None
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in _DURATION_PART.findall(text)) or None


@dataclass(frozen=True)
class ActiveTarget:
    scrape_url: str
    labels: dict[str, str]
    scrape_interval_s: float | None
    health: str
    last_error: str | None


def parse_active_targets(data: Any) -> list[ActiveTarget]:
    active = []
    for entry in (data or {}).get("activeTargets") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("labels"), dict):
            continue
        active.append(
            ActiveTarget(
                scrape_url=str(entry.get("scrapeUrl") or ""),
                labels={str(k): str(v) for k, v in entry["labels"].items()},
                scrape_interval_s=parse_duration(entry.get("scrapeInterval")),
                health=str(entry.get("health") or "unknown"),
                last_error=str(entry.get("lastError") or "") or None,
            )
        )
    return active


def _matcher(label: str, values: list[str]) -> tuple[str, str, str]:
    if len(values) == 1:
        return (label, "=", values[0])
    return (label, "=~", "|".join(_regex_escape(v) for v in values))


def typical_interval(active: Sequence[ActiveTarget] | None) -> float:
    """The staleness yardstick for a target whose own scrape interval is unknown."""
    intervals = [a.scrape_interval_s for a in active or [] if a.scrape_interval_s]
    return max(intervals) if intervals else DEFAULT_SCRAPE_INTERVAL_S


def resolve_selectors(
    targets: Sequence[Target], active: Sequence[ActiveTarget] | None
) -> tuple[dict[str, Selector], dict[str, list[str]]]:
    """A selector per target name, and warnings per target name."""
    by_url: dict[tuple[str, str, int, str, str], list[ActiveTarget]] = defaultdict(list)
    for entry in active or []:
        key = _normalized_url(entry.scrape_url)
        if key is not None:
            by_url[key].append(entry)
    selectors: dict[str, Selector] = {}
    warnings: dict[str, list[str]] = defaultdict(list)
    for target in targets:
        matches = sorted(
            by_url.get(_normalized_url(target.url) or ("", "", 0, "", ""), []),
            key=lambda e: (e.labels.get("job", ""), e.labels.get("instance", "")),
        )
        if matches:
            # Every job (or replica-labelled copy) scraping this URL: the same server, whose
            # duplicate series `one_scrape` merges.
            matchers = tuple(
                _matcher(label, sorted({m.labels[label] for m in matches if label in m.labels}))
                for label in ("job", "instance")
                if any(label in m.labels for m in matches)
            )
            intervals = [m.scrape_interval_s for m in matches if m.scrape_interval_s]
            healthy = any(m.health == "up" for m in matches)
            selectors[target.name] = Selector(
                matchers=matchers,
                drop_labels=frozenset(label for m in matches for label in m.labels),
                by_scrape_url=True,
                scrape_interval_s=max(intervals) if intervals else None,
                last_error=None if healthy else matches[0].last_error,
            )
            continue
        parts = urlsplit(target.url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal: Prometheus writes it in brackets
            host = f"[{host}]"
        if parts.port is not None:
            matcher = ("instance", "=", f"{host}:{parts.port}")
        else:
            # Prometheus 2 appends the scheme's default port to the instance, Prometheus 3 not.
            default = 443 if parts.scheme == "https" else 80
            matcher = ("instance", "=~", f"{_regex_escape(host)}(?::{default})?")
        selectors[target.name] = Selector(
            matchers=(matcher,), drop_labels=frozenset({"job", "instance"}), by_scrape_url=False
        )
    return selectors, warnings


# -- series → families → canonical ----------------------------------------------------------


def _family_of(name: str, keys: frozenset[str]) -> tuple[str, str] | None:
    if name in keys:
        return name, "untyped"
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in keys:
            return name[: -len(suffix)], "histogram"
    return None


def families_from_samples(
    samples: Iterable[tuple[dict[str, str], float]],
    keys: frozenset[str],
    drop_labels: frozenset[str] = frozenset({"job", "instance"}),
) -> dict[str, MetricFamily]:
    """Prometheus samples (labels with `__name__`, value) in the exposition parser's structure.

    Family keys follow `parse_exposition`: a histogram's `_bucket/_sum/_count` series belong to
    its base name, anything else is keyed by its series name. Labels Prometheus attached to the
    target are removed; a scraped label it renamed to `exported_<name>` gets its name back.
    """
    families: dict[str, MetricFamily] = {}
    for labels, value in samples:
        name = labels.get("__name__", "")
        found = _family_of(name, keys)
        if found is None:
            continue
        key, kind = found
        clean = {k: v for k, v in labels.items() if k != "__name__" and k not in drop_labels}
        for label in [k for k in clean if k.startswith("exported_")]:
            original = label[len("exported_") :]
            if original in drop_labels:
                clean[original] = clean.pop(label)
        family = families.get(key)
        if family is None:
            family = families[key] = MetricFamily(key, kind)
        elif kind == "histogram" and family.type != "histogram":
            family.type = "histogram"
        family.samples.append(Sample(name, clean, value))
    return families


class NoEngineMetrics(ValueError):
    pass


def canonical_from_families(
    families: dict[str, MetricFamily], hint: Engine | None
) -> tuple[Engine, list[CanonicalSnapshot]]:
    """Detect the engine and map, as `snapshots_from_text` does for a scrape body."""
    keep = wanted_families(hint)
    chosen = {key: family for key, family in families.items() if key in keep}
    detected = detect_engine(chosen)
    if detected is None:
        expected = _DISPLAY[hint] if hint else "vLLM/SGLang/TGI/llama.cpp"
        other = detect_engine(families) if hint else None
        found = f" (found {_DISPLAY[other]} metrics)" if other else ""
        raise NoEngineMetrics(
            f"no {expected} metrics found in Prometheus{found}: is metrics export enabled on "
            "the server?"
        )
    return detected, to_canonical(detected, chosen)


# -- one target at one instant --------------------------------------------------------------


def _parse_value(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def matrix_by_time(result: Any) -> dict[int, list[tuple[dict[str, str], float]]]:
    """A query_range matrix regrouped per evaluation time (integer milliseconds)."""
    by_time: dict[int, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for series in result or []:
        labels = series.get("metric") or {}
        for stamp, value in series.get("values") or []:
            by_time[round(float(stamp) * 1000)].append((labels, _parse_value(value)))
    return by_time


@dataclass
class Instant:
    """What Prometheus holds for one target at one evaluation time."""

    at_ms: int
    scrape_ts: float | None
    result: ScrapeResult | None  # None: no data at all at this time


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


LabeledSample = tuple[dict[str, str], float]
_Identity = frozenset[tuple[str, frozenset[tuple[str, str]]]]  # series names with their labels


def _is_timestamp(labels: dict[str, str]) -> bool:
    return labels.get(TAG_LABEL) == TAG_VALUE and "__name__" not in labels


def one_scrape(
    selector: Selector, samples: list[LabeledSample], dedup_labels: frozenset[str]
) -> tuple[list[LabeledSample], str | None]:
    """The samples of one scrape of the target at one step, or why there is none to choose.

    Series that differ only in `dedup_labels` (who scraped them: `job`, replica labels) are
    copies of one server's series. Taking one copy, not adding them up, is what keeps a server
    scraped by two jobs or two HA replicas from counting twice; taking one whole scrape (the
    freshest that worked) keeps the values of a row from one moment. Under instance matching,
    jobs whose series are not the same set may be different servers behind one host:port: that
    is refused, not mixed.
    """
    groups: dict[tuple[tuple[str, str], ...], list[LabeledSample]] = defaultdict(list)
    for labels, value in samples:
        scraper = tuple(sorted((k, v) for k, v in labels.items() if k in dedup_labels))
        groups[scraper].append((labels, value))
    if len(groups) <= 1:
        return samples, None
    if not selector.by_scrape_url:
        strip = dedup_labels | selector.drop_labels | {"__name__"}
        identities: dict[str, set[_Identity]] = defaultdict(set)
        for scraper, group in groups.items():
            identity = frozenset(
                (
                    labels.get("__name__", ""),
                    frozenset(i for i in labels.items() if i[0] not in strip),
                )
                for labels, _ in group
                if labels.get("__name__") not in (None, *_META_NAMES)
            )
            if identity:
                identities[dict(scraper).get("job", "")].add(identity)
        if len(identities) > 1 and len({i for ids in identities.values() for i in ids}) > 1:
            jobs = sorted(identities)
            return [], (
                f"{len(jobs)} Prometheus jobs ({', '.join(j for j in jobs if j)}) scrape "
                f"{selector.describe()} with different series: cannot tell which is this target; "
                "give it the URL Prometheus scrapes (see `perf-pipelines prometheus discover`)"
            )

    def rank(group: list[LabeledSample]) -> tuple[bool, float]:
        worked = any(labels.get("__name__") == "up" and value == 1 for labels, value in group)
        stamps = [v for labels, v in group if _is_timestamp(labels) and math.isfinite(v)]
        return worked, max(stamps, default=-math.inf)

    # max() keeps the first of equals: ties go to the smallest scraper labels, every time.
    chosen = max((groups[key] for key in sorted(groups)), key=rank)
    return chosen, None


def build_instant(
    target: Target,
    selector: Selector,
    samples: list[LabeledSample],
    at_ms: int,
    *,
    last_error: str | None = None,
    dedup_labels: frozenset[str] = frozenset({"job"}),
) -> Instant:
    samples, ambiguous = one_scrape(selector, samples, dedup_labels)
    up_values: list[float] = []
    scrape_ts: float | None = None
    duration: float | None = None
    engine_samples = []
    for labels, value in samples:
        name = labels.get("__name__")
        if _is_timestamp(labels):
            scrape_ts = value if math.isfinite(value) else None
        elif name == "up":
            up_values.append(value)
        elif name == "scrape_duration_seconds":
            duration = value
        else:
            engine_samples.append((labels, value))
    if not up_values and not engine_samples and ambiguous is None:
        return Instant(at_ms, scrape_ts, None)
    collected_at = _stamp(scrape_ts if scrape_ts is not None else at_ms / 1000)
    scrape_ms = duration * 1000 if duration is not None and math.isfinite(duration) else math.nan

    def down(reason: str) -> Instant:
        result = ScrapeResult(
            target=target,
            collected_at=collected_at,
            up=False,
            scrape_ms=scrape_ms,
            error=redact_and_clip(reason, 500),
            engine=target.engine_hint,
        )
        return Instant(at_ms, scrape_ts, result)

    if ambiguous is not None:
        return down(ambiguous)
    if up_values and not any(v == 1 for v in up_values):
        reason = "Prometheus could not scrape the target (up=0)"
        return down(reason + (f": {last_error}" if last_error else ""))
    families = families_from_samples(
        engine_samples, wanted_families(None), selector.drop_labels | dedup_labels
    )
    try:
        engine, snapshots = canonical_from_families(families, target.engine_hint)
    except NoEngineMetrics as exc:
        return down(str(exc))
    for snapshot in snapshots:
        if snapshot.model is None:
            snapshot.model = target.model
    result = ScrapeResult(
        target=target,
        collected_at=collected_at,
        up=True,
        scrape_ms=scrape_ms,
        engine=engine,
        snapshots=snapshots,
    )
    return Instant(at_ms, scrape_ts, result)


def distinct_scrapes(instants: list[Instant], predecessor: Instant | None = None) -> list[Instant]:
    """Instants with data, minus those that repeat the previous step's scrape.

    The decision for a step depends only on it and the step before, so reading the same history
    twice keeps the same steps.
    """
    kept = []
    previous = predecessor
    for instant in instants:
        repeat = (
            previous is not None
            and instant.scrape_ts is not None
            and previous.scrape_ts == instant.scrape_ts
        )
        if instant.result is not None and not repeat:
            kept.append(instant)
        previous = instant
    return kept


# -- rows -------------------------------------------------------------------------------------


def rows_for(run_id: str, indexed: Iterable[tuple[int, ScrapeResult]]) -> list[SnapshotRow]:
    """`metric_snapshots` rows, built by the same code as for scrape rounds."""
    rows: list[SnapshotRow] = []
    for sample_index, result in indexed:
        for row in rows_from_rounds(run_id, [[result]]):
            rows.append(
                replace(
                    row,
                    sample_index=sample_index,
                    scrape_ms=None if math.isnan(result.scrape_ms) else row.scrape_ms,
                )
            )
    return rows


# -- reading recent samples (the regular cycle) ---------------------------------------------


@dataclass
class TargetRead:
    """What Prometheus says about one target: results (oldest first), or why its state is
    unknown (`unknown`; `failed` when that is because a call to Prometheus failed)."""

    target: Target
    selector: Selector | None
    results: list[ScrapeResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unknown: str | None = None
    failed: PrometheusError | None = None

    @property
    def latest(self) -> ScrapeResult:
        return self.results[-1]


def _failed(read: TargetRead, exc: PrometheusError) -> TargetRead:
    read.results, read.unknown, read.failed = [], redact_and_clip(str(exc), 500), exc
    return read


def source_failure(reads: Sequence[TargetRead]) -> PrometheusError | None:
    """Prometheus itself failed: not one target could be asked. Then no server's state is
    known, and none is down. The error that ended the cycle's reading names it best."""
    errors = [read.failed for read in reads]
    if not reads or any(error is None for error in errors):
        return None
    known = [error for error in errors if error is not None]
    for wanted in (lambda e: e.cycle_deadline, lambda e: e.source_wide, lambda e: True):
        chosen = next((e for e in known if wanted(e)), None)
        if chosen is not None:
            return chosen
    return None


@dataclass
class _Resolved:
    selectors: dict[str, Selector]
    warnings: dict[str, list[str]]
    failed: PrometheusError | None  # /api/v1/targets failed (then instance matching)
    interval_s: float  # staleness yardstick for targets without their own scrape interval


async def _selectors(client: PrometheusClient, targets: Sequence[Target]) -> _Resolved:
    """Selectors per target. Raises `PrometheusError` when Prometheus itself failed."""
    failed: PrometheusError | None = None
    try:
        answer = await client.active_targets()
        active: list[ActiveTarget] | None = parse_active_targets(answer.data)
    except PrometheusError as exc:
        if exc.source_wide:  # down, silent, refusing us, or no API: no query would fare better
            raise
        # Thanos, Mimir or VictoriaMetrics may not serve /api/v1/targets: match by instance.
        log.info("Prometheus active targets unavailable (%s): matching by instance", exc)
        active = None
        failed = exc
    selectors, warnings = resolve_selectors(targets, active)
    return _Resolved(selectors, warnings, failed, typical_interval(active))


async def read_recent(
    config: PrometheusConfig,
    targets: Sequence[Target],
    samples: int,
    interval_s: float,
    *,
    now: float | None = None,
    deadline: float | None = None,
) -> list[TargetRead]:
    """The last `samples` distinct scrapes of each target, about `interval_s` apart.

    Never raises for a Prometheus problem: a target that cannot be read is unknown, with the
    reason. Everything ends by `deadline` (`time.monotonic()`; default: config.cycle_timeout_s
    from now), each query also by its own timeout.
    """
    now = now if now is not None else datetime.now(UTC).timestamp()
    try:
        config.validated_url()
    except PrometheusError as exc:
        return [_failed(TargetRead(t, None), exc) for t in targets]
    async with PrometheusClient(config, deadline) as client:
        try:
            resolved = await _selectors(client, targets)
        except PrometheusError as exc:
            return [_failed(TargetRead(t, None), exc) for t in targets]
        semaphore = asyncio.Semaphore(max(1, config.concurrency))
        dedup = frozenset(config.dedup_labels)

        async def one(target: Target) -> TargetRead:
            selector = resolved.selectors[target.name]
            warnings = list(resolved.warnings.get(target.name, []))
            read = TargetRead(target, selector, warnings=warnings)
            async with semaphore:
                try:
                    await _read_one_recent(
                        client, read, samples, interval_s, now, dedup, resolved.interval_s
                    )
                except PrometheusError as exc:
                    _failed(read, exc)
            return read

        return list(await asyncio.gather(*(one(t) for t in targets)))


async def _read_one_recent(
    client: PrometheusClient,
    read: TargetRead,
    samples: int,
    interval_s: float,
    now: float,
    dedup_labels: frozenset[str],
    typical_interval_s: float,
) -> None:
    selector = read.selector
    assert selector is not None
    # Steps shorter than Prometheus' scrape interval would only repeat the same scrape.
    step = max(interval_s, selector.scrape_interval_s or 0.0, DEFAULT_STEP_S)
    start = now - (samples - 1) * step
    answer = await client.query_range(
        series_query(selector, wanted_families(None)), start, now, step
    )
    read.warnings.extend(answer.warnings)
    by_time = matrix_by_time(_matrix(answer))
    instants = [
        build_instant(
            read.target,
            selector,
            by_time[at],
            at,
            last_error=selector.last_error if index == len(by_time) - 1 else None,
            dedup_labels=dedup_labels,
        )
        for index, at in enumerate(sorted(by_time))
    ]
    # Judged by the scrape's own time, not by Prometheus returning something: a query returns a
    # series' last sample for the whole look-back delta (5 min) when no staleness marker ended it.
    max_age = STALE_AFTER_INTERVALS * max(step, selector.scrape_interval_s or typical_interval_s)
    current = [
        instant
        for instant in instants
        if instant.scrape_ts is None or instant.at_ms / 1000 - instant.scrape_ts <= max_age
    ]
    kept = distinct_scrapes(current)
    results = [instant.result for instant in kept if instant.result is not None]
    stamps = [i.scrape_ts for i in instants if i.result is not None and i.scrape_ts is not None]
    if not results and stamps:
        read.unknown = (
            f"only stale samples in Prometheus for {selector.describe()}: the newest is "
            f"{now - max(stamps):.0f}s old (more than {max_age:g}s, {STALE_AFTER_INTERVALS} "
            "scrape intervals): is the target still in Prometheus' scrape config? (a removed "
            "target's last sample is returned for 5 minutes after a restart)"
        )
    elif not results:
        read.unknown = (
            f"no samples in Prometheus for {selector.describe()} in the last "
            f"{now - start + step:g}s: is Prometheus scraping this target? "
            "(label matching: docs/prometheus.md)"
        )
    elif len(results) < samples:
        read.warnings.append(
            f"partial data: {len(results)} of {samples} samples in Prometheus over the last "
            f"{now - start:g}s"
        )
    read.results = results


def _matrix(answer: ApiResult) -> Any:
    data = answer.data or {}
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise PrometheusError("Prometheus answered a range query without a matrix")
    return data.get("result")


def rows_from_reads(run_id: str, reads: Sequence[TargetRead]) -> list[SnapshotRow]:
    rows: list[SnapshotRow] = []
    for read in reads:
        rows.extend(rows_for(run_id, enumerate(read.results)))
    return rows


# -- history (back-fill) --------------------------------------------------------------------


@dataclass
class HistoryRead:
    target: Target
    rows: list[SnapshotRow] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


BACKFILL_PREFIX = "backfill-"


def backfill_run_id(chunk_start_ms: int, target: str) -> str:
    """Deterministic: the same chunk of the same target's history always has the same run id.

    Cut to the column's 64 characters; the target is a key column of its own anyway.
    """
    stamp = _stamp(chunk_start_ms / 1000).strftime("%Y%m%dT%H%M%SZ")
    return f"{BACKFILL_PREFIX}{stamp}-{target}"[:64]


async def read_history(
    config: PrometheusConfig,
    targets: Sequence[Target],
    start: float,
    end_by_target: dict[str, float],
    step_s: float,
    *,
    deadline: float | None = None,
) -> list[HistoryRead]:
    """Rows for each target's history on the epoch-aligned grid of `step_s` in [start, end).

    `end_by_target` gives each target's exclusive end (e.g. its oldest stored row). Steps
    without data are skipped; a target Prometheus could not scrape at a step gets a down row.
    Everything ends by `deadline` (`time.monotonic()`), as in `read_recent`.
    """
    step_ms = max(1, round(step_s * 1000))
    try:
        config.validated_url()
    except PrometheusError as exc:
        return [HistoryRead(t, error=str(exc)) for t in targets]
    async with PrometheusClient(config, deadline) as client:
        try:
            resolved = await _selectors(client, targets)
        except PrometheusError as exc:
            return [HistoryRead(t, error=str(exc)) for t in targets]
        semaphore = asyncio.Semaphore(max(1, config.concurrency))
        dedup = frozenset(config.dedup_labels)
        failed = resolved.failed

        async def one(target: Target) -> HistoryRead:
            read = HistoryRead(target, warnings=list(resolved.warnings.get(target.name, [])))
            end = end_by_target.get(target.name)
            if end is None or end <= start:
                return read
            async with semaphore:
                try:
                    await _read_one_history(
                        client, read, resolved.selectors[target.name], start, end, step_ms, dedup
                    )
                except PrometheusError as exc:
                    read.error = str(exc)
                    read.rows = []
            return read

        reads = list(await asyncio.gather(*(one(t) for t in targets)))
    if failed:
        for read in reads:
            read.warnings.append(f"active targets unavailable: {failed}")
    return reads


async def _read_one_history(
    client: PrometheusClient,
    read: HistoryRead,
    selector: Selector,
    start: float,
    end: float,
    step_ms: int,
    dedup_labels: frozenset[str],
) -> None:
    first = math.ceil(start * 1000 / step_ms) * step_ms
    last = (math.ceil(end * 1000 / step_ms) - 1) * step_ms  # end is exclusive
    if last < first:
        return
    chunk_ms = step_ms * BACKFILL_CHUNK_STEPS
    query = series_query(selector, wanted_families(None))
    for chunk in range(first // chunk_ms, last // chunk_ms + 1):
        chunk_start = chunk * chunk_ms
        low = max(first, chunk_start)
        high = min(last, chunk_start + chunk_ms - step_ms)
        # One step more in front: whether a step repeats its predecessor's scrape is decided
        # from the data, whatever range a run asked for.
        answer = await client.query_range(
            query, (low - step_ms) / 1000, high / 1000, step_ms / 1000
        )
        read.warnings.extend(answer.warnings)
        by_time = matrix_by_time(_matrix(answer))
        predecessor = None
        instants = []
        for at in range(low - step_ms, high + 1, step_ms):
            instant = (
                build_instant(read.target, selector, by_time[at], at, dedup_labels=dedup_labels)
                if at in by_time
                else Instant(at, None, None)
            )
            if at < low:
                predecessor = instant
            else:
                instants.append(instant)
        kept = distinct_scrapes(instants, predecessor)
        run_id = backfill_run_id(chunk_start, read.target.name)
        read.rows.extend(
            rows_for(
                run_id,
                (
                    ((instant.at_ms - chunk_start) // step_ms, instant.result)
                    for instant in kept
                    if instant.result is not None
                ),
            )
        )
