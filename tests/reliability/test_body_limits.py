"""Huge and never-ending bodies: the collector stops at SCRAPE_MAX_BYTES quickly and its memory
stays bounded by the cap, not by what the server sends. Measured in this process: the server
generates its body while sending (it holds 64 KiB, never 100 MB), so the resident-set growth
sampled during the scrape is the collector's own.
"""

import asyncio
import time

import pytest

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.targets import Target
from tests.reliability.support import PeakRss, huge, serve_lazily

MIB = 1024 * 1024
CAP = 16 * MIB  # the default SCRAPE_MAX_BYTES
HUNDRED_MB = 100_000_000


def _scrape(responder, limits: ScrapeLimits):  # type: ignore[no-untyped-def]
    with serve_lazily({"/metrics": responder}) as server:
        target = Target(name="big", url=server.base_url + "/metrics", engine="vllm")  # type: ignore[arg-type]
        with PeakRss() as rss:
            started = time.perf_counter()
            (results,) = asyncio.run(collect([target], limits))
            elapsed = time.perf_counter() - started
        sent = server.bytes_sent
    return results[0], elapsed, rss, sent


@pytest.mark.parametrize(
    "size", [HUNDRED_MB, 1 << 60], ids=["100mb-chunked-no-length", "endless-chunked"]
)
def test_a_huge_streamed_body_stops_at_the_cap_with_bounded_memory(size: int) -> None:
    result, elapsed, rss, sent = _scrape(
        huge(size, declare_length=False), ScrapeLimits(timeout_s=10, max_bytes=CAP)
    )
    print(
        f"\n{size=}: {elapsed:.2f} s, RSS +{rss.growth / MIB:.1f} MiB, server sent "
        f"{sent / MIB:.1f} MiB before the collector hung up"
    )
    assert not result.up and result.error == f"body exceeds the {CAP}-byte cap"
    assert result.snapshots == [] and result.body_bytes is None
    assert elapsed < 5  # loopback delivers 16 MiB in well under a second; 5 s on a busy box
    # Bounded by the cap (16 MiB of chunks held until refused, plus buffers), not by the body.
    assert rss.growth < 3 * CAP, rss.growth
    assert sent < 3 * CAP  # the collector hung up right after the cap, not at the end


def test_a_declared_100mb_body_is_refused_before_reading() -> None:
    result, elapsed, rss, _sent = _scrape(
        huge(HUNDRED_MB, declare_length=True), ScrapeLimits(timeout_s=10, max_bytes=CAP)
    )
    print(f"\ndeclared 100 MB: {elapsed:.3f} s, RSS +{rss.growth / MIB:.1f} MiB")
    assert not result.up
    assert result.error == f"body of {HUNDRED_MB} bytes exceeds the {CAP}-byte cap"
    assert elapsed < 2
    assert rss.growth < 8 * MIB  # nothing of the body was read
