"""Current settings a server states beside its /metrics: llama.cpp's slots and their context.

llama-server exports neither `--parallel` nor the context of a slot in /metrics; its `GET /props`
(always served, next to /metrics) says both. The collector reads it once per collection run and
target, after a successful scrape, with its own bounded request: a deadline, a body cap, no
content coding (an inflated body is never trusted to stay small) and no redirect. A server
without /props (404: a proxy that passes /metrics only) leaves the settings to the targets file;
any other failure is recorded on the snapshots, which stay up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.engines.llamacpp import settings_from_props
from perf_pipelines.logs import redact_and_clip

# /props carries the chat template and the web UI's settings besides the figures read here:
# tens of kilobytes on real servers; 1 MiB is far above that and small enough to hold.
PROPS_MAX_BYTES = 1024 * 1024


class SettingsReadError(Exception):
    """/props could not be read; the message is the reason stored with the snapshots."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What one read of /props gave: settings, and reasons for values refused or not read."""

    settings: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def props_url(metrics_url: str) -> str:
    """/props beside the scraped path: `…/metrics` → `…/props` (a path prefix is kept)."""
    return urljoin(metrics_url, "props")


async def read_props(client: httpx.AsyncClient, url: str, max_bytes: int = PROPS_MAX_BYTES) -> Any:
    """The JSON of `url`; None when the server has no such page (404)."""
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise SettingsReadError(f"HTTP {response.status_code}")
        coding = response.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise SettingsReadError(f"Content-Encoding {coding!r} refused")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise SettingsReadError(f"body of {declared} bytes exceeds the {max_bytes}-byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise SettingsReadError(f"body exceeds the {max_bytes}-byte cap")
            chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        raise SettingsReadError(f"not JSON ({type(exc).__name__})") from None


async def llamacpp_settings(
    client: httpx.AsyncClient, metrics_url: str, timeout_s: float
) -> ServerSettings:
    """Read a llama-server's /props within `timeout_s`; every failure becomes a problem."""
    try:
        async with asyncio.timeout(timeout_s):
            props = await read_props(client, props_url(metrics_url))
    except TimeoutError:
        return ServerSettings(
            problems=(f"settings not read from /props: timeout after {timeout_s:g}s",)
        )
    except (SettingsReadError, httpx.HTTPError) as exc:
        reason = redact_and_clip(str(exc) or type(exc).__name__, 200)
        return ServerSettings(problems=(f"settings not read from /props: {reason}",))
    if props is None:
        return ServerSettings()
    settings, problems = settings_from_props(props)
    return ServerSettings(settings, tuple(problems))


async def add_llamacpp_settings(
    client: httpx.AsyncClient,
    metrics_url: str,
    snapshots: Sequence[CanonicalSnapshot],
    timeout_s: float,
    known: dict[str, ServerSettings],
) -> None:
    """Put the server's slots and context per slot into `snapshots`' settings. `known` holds
    what was read per URL in this run; a read that failed is tried again on the next round."""
    read = known.get(metrics_url)
    if read is None:
        read = await llamacpp_settings(client, metrics_url, timeout_s)
        if read.settings or not read.problems:
            known[metrics_url] = read
    for snapshot in snapshots:
        snapshot.settings.update(read.settings)
        snapshot.rejected.extend(read.problems)
