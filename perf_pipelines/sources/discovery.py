"""Find the inference servers a Prometheus already scrapes, and write a targets file for them.

Series of the engine metric names the adapters read (`/api/v1/series`) are grouped by
(`job`, `instance`); each group's names go through the same engine auto-detection as a scrape
body. The URL of a server is the scrape URL Prometheus uses (`/api/v1/targets`), so a written
targets file matches the series back exactly; without that endpoint it is
`http://<instance>/metrics`. `up` says whether Prometheus' last scrape worked.

A server that several jobs scrape (the same URL and engine) is listed once, with every job in
`jobs`: two targets for it would count it twice in the fleet.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from perf_pipelines.engines import detect_engine, wanted_families
from perf_pipelines.engines.canonical import Engine
from perf_pipelines.sources.promapi import PrometheusClient, PrometheusConfig, PrometheusError
from perf_pipelines.sources.prometheus import parse_active_targets
from perf_pipelines.targets import Target, parse_targets

_MODEL_LABEL = "model_name"  # vLLM and SGLang; TGI and llama.cpp have no model label
_NAME_BAD = re.compile(r"[^a-z0-9._-]+")


@dataclass
class DiscoveredServer:
    job: str
    instance: str
    engine: Engine
    url: str
    url_from_scrape_config: bool
    models: list[str] = field(default_factory=list)
    up: bool | None = None
    name: str = ""
    jobs: list[str] = field(default_factory=list)  # every job scraping it; `job` is the first


def _exact_names_pattern() -> str:
    return "|".join(sorted(wanted_families(None)))


async def discover(config: PrometheusConfig, lookback_s: float = 600.0) -> list[DiscoveredServer]:
    """Inference servers with engine series in the last `lookback_s` seconds.

    Raises `PrometheusError` when Prometheus cannot be asked.
    """
    now = datetime.now(UTC).timestamp()
    async with PrometheusClient(config) as client:
        # Histograms have no series under their bare name, so exact names select the gauges and
        # counters only: a few series per server instead of hundreds of buckets.
        answer = await client.series(
            [f'{{__name__=~"{_exact_names_pattern()}"}}'], now - lookback_s, now
        )
        names: dict[tuple[str, str], set[str]] = defaultdict(set)
        models: dict[tuple[str, str], set[str]] = defaultdict(set)
        for labels in answer.data or []:
            key = (labels.get("job", ""), labels.get("instance", ""))
            names[key].add(labels.get("__name__", ""))
            if labels.get(_MODEL_LABEL):
                models[key].add(labels[_MODEL_LABEL])
        up = await client.query("up", now)
        up_by_key = {
            (s["metric"].get("job", ""), s["metric"].get("instance", "")): s["value"][1] == "1"
            for s in (up.data or {}).get("result") or []
        }
        try:
            active = parse_active_targets((await client.active_targets()).data)
        except PrometheusError:
            active = []
    scrape_urls = {
        (a.labels.get("job", ""), a.labels.get("instance", "")): a.scrape_url for a in active
    }
    servers: dict[tuple[str, Engine], DiscoveredServer] = {}
    for key in sorted(names):
        engine = detect_engine(names[key])
        if engine is None:
            continue
        job, instance = key
        url = scrape_urls.get(key)
        server = DiscoveredServer(
            job=job,
            instance=instance,
            engine=engine,
            url=url or f"http://{instance}/metrics",
            url_from_scrape_config=url is not None,
            models=sorted(models[key]),
            up=up_by_key.get(key),
            jobs=[job],
        )
        same = servers.get((server.url, engine))
        if same is None:
            servers[(server.url, engine)] = server
            continue
        # Another job scraping the same server: one entry, up when any of its scrapes works.
        same.jobs.append(job)
        same.models = sorted({*same.models, *server.models})
        if server.up is not None:
            same.up = bool(same.up) or server.up
    listed = list(servers.values())
    _name(listed)
    return listed


def _slug(text: str) -> str:
    return _NAME_BAD.sub("-", text.lower()).strip("-.")[:100] or "server"


def _name(servers: Sequence[DiscoveredServer]) -> None:
    """Target names: the job when it names one server, else job and instance; always unique."""
    per_job: dict[str, int] = defaultdict(int)
    for server in servers:
        per_job[server.job] += 1
    taken: set[str] = set()
    for server in servers:
        base = _slug(server.job if per_job[server.job] == 1 else f"{server.job}-{server.instance}")
        name, counter = base, 2
        while name in taken:
            name, counter = f"{base}-{counter}", counter + 1
        taken.add(name)
        server.name = name


def as_targets(servers: Sequence[DiscoveredServer]) -> list[Target]:
    """Validated targets (the same validation as a targets file)."""
    entries = []
    for server in servers:
        entry: dict[str, object] = {
            "name": server.name,
            "url": server.url,
            "engine": server.engine.value,
        }
        if len(server.models) == 1:
            entry["model"] = server.models[0]
        entries.append(entry)
    return parse_targets({"targets": entries}, source="discovered servers")
