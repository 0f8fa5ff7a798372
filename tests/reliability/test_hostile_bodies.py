"""Hostile bodies, round 2 (issue #21, classes 1–5): compression bombs, bodies that are slow to
parse, series written twice with their labels reordered, values outside their metric's domain,
and targets that expose thousands of models. Real loopback servers, the real collector, rows
stored in a real SQLite file; each test failed on the code before its fix (see
docs/reliability.md, "Hostile bodies, round 2").
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.schema import metric_snapshots
from perf_pipelines.storage.snapshots import insert_snapshots
from perf_pipelines.targets import Target
from tests.reliability.support import TEXT, PeakRss, Responder, serve_lazily, static

MIB = 1024 * 1024
CAP = 16 * MIB  # the default SCRAPE_MAX_BYTES
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LINE = b'vllm:num_requests_running{engine="0",model_name="m"} 1\n'


def _encoded(body: bytes, encoding: str) -> Responder:
    def respond(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", TEXT)
        handler.send_header("Content-Encoding", encoding)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def _target(name: str, url: str) -> Target:
    return Target(name=name, url=url, engine="vllm")  # type: ignore[arg-type]


def _scrape(
    routes: dict[str, Responder], limits: ScrapeLimits, paths: tuple[str, ...] = ("/metrics",)
) -> tuple[list[ScrapeResult], float, PeakRss]:
    with serve_lazily(routes) as server:
        targets = [_target(path.strip("/"), server.base_url + path) for path in paths]
        with PeakRss() as rss:
            started = time.perf_counter()
            (results,) = asyncio.run(collect(targets, limits))
            elapsed = time.perf_counter() - started
    return results, elapsed, rss


def _stored(tmp_path: Path, results: list[ScrapeResult]) -> list[Any]:
    """The results as `metric_snapshots` rows in a fresh SQLite file, read back."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'perf.db'}")
    try:
        ensure_schema(engine)
        with engine.begin() as connection:
            insert_snapshots(connection, rows_from_rounds("run-1", [results]))
        with engine.connect() as connection:
            return list(
                connection.execute(select(metric_snapshots).order_by(metric_snapshots.c.id))
            )
    finally:
        engine.dispose()


# -- class 1: compression -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def double_gzip_bomb() -> Iterator[bytes]:
    """11 KB that inflate to 6.9 MB of gzip, which inflate to 2.2 GiB of valid exposition lines.

    The inner stream is one 1 MiB block compressed once and repeated (a full flush resets the
    compressor, so every copy is byte-identical), with the real CRC: a valid gzip body.
    """
    block = LINE * (MIB // len(LINE))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    copies = 2200
    crc = 0
    for _ in range(copies):
        crc = zlib.crc32(block, crc)
    inner = (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        + piece * copies
        + compressor.flush()
        + struct.pack("<II", crc, (len(block) * copies) & 0xFFFFFFFF)
    )
    yield gzip.compress(inner, 9)


@pytest.mark.parametrize(
    ("max_ratio", "reason"),
    [
        (100.0, "compressed body exceeds the compression ratio cap of 100:1"),
        # With the ratio cap out of the way, the byte cap on every layer still stops it.
        (1e9, f"compressed body inflates past the {CAP}-byte cap"),
    ],
    ids=["ratio-cap", "byte-cap"],
)
def test_a_body_compressed_twice_is_refused_within_its_deadline(
    double_gzip_bomb: bytes, max_ratio: float, reason: str
) -> None:
    limits = ScrapeLimits(timeout_s=3, max_bytes=CAP, max_ratio=max_ratio)
    (result,), elapsed, rss = _scrape(
        {"/metrics": _encoded(double_gzip_bomb, "gzip, gzip")}, limits
    )
    print(f"\ndouble gzip bomb: {elapsed:.2f} s, RSS +{rss.growth / MIB:.1f} MiB, {result.error}")
    assert not result.up, result
    assert (result.error or "").startswith(reason), result.error
    assert elapsed < limits.timeout_s, elapsed  # refused early, never past the deadline
    assert rss.growth < 3 * CAP, rss.growth  # bounded by the cap, not by the 2.2 GiB


def test_a_compression_ratio_above_the_cap_is_refused() -> None:
    # 8 MiB of valid lines (half the byte cap) in 8 KB of gzip: a ratio of ~1,000.
    body = b"# TYPE vllm:num_requests_running gauge\n" + LINE * (8 * MIB // len(LINE))
    limits = ScrapeLimits(timeout_s=5, max_bytes=CAP)
    (result,), _elapsed, _rss = _scrape({"/metrics": _encoded(gzip.compress(body), "gzip")}, limits)
    assert not result.up, result
    assert result.error is not None and "compression ratio" in result.error, result.error


def test_an_unsupported_content_encoding_is_refused_with_its_name() -> None:
    body = b"# TYPE vllm:num_requests_running gauge\n" + LINE
    (result,), _elapsed, _rss = _scrape(
        {"/metrics": _encoded(body, "br")}, ScrapeLimits(timeout_s=5, max_bytes=CAP)
    )
    assert not result.up, result
    assert result.error == "unsupported Content-Encoding 'br'", result.error


# -- class 2: parsing inside the deadline, off the event loop ----------------------------------


def test_a_body_slow_to_parse_delays_no_other_target() -> None:
    """One target's 16 MiB body takes seconds to parse (every line needs the slow parser: its
    labels hold escapes); a second target's answer comes while the first body is being parsed.
    Both deadlines are 1 s."""
    slow_line = b'vllm:num_requests_running{engine="0",model_name="m\\\\x"} 1\n'
    slow = b"# TYPE vllm:num_requests_running gauge\n" + slow_line * (16 * MIB // len(slow_line))
    small_body = b"# TYPE vllm:num_requests_running gauge\n" + LINE
    sent = threading.Event()

    def huge(handler: Any) -> None:
        handler.send_body(slow)
        handler.wfile.flush()
        sent.set()

    def small(handler: Any) -> None:
        # Answers 0.3 s after the big body is out, as a busy server does: the collector reads
        # this answer while it parses the big body.
        sent.wait(30)
        handler.send_response(200)
        handler.send_header("Content-Type", TEXT)
        handler.send_header("Content-Length", str(len(small_body)))
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(0.3)
        handler.wfile.write(small_body)

    limits = ScrapeLimits(timeout_s=1.0, max_bytes=2 * CAP)
    (slow_result, fast_result), elapsed, _rss = _scrape(
        {"/slow": huge, "/fast": small}, limits, paths=("/slow", "/fast")
    )
    print(
        f"\nslow body: {slow_result.scrape_ms:.0f} ms ({slow_result.error}); other target: "
        f"{fast_result.scrape_ms:.0f} ms; round {elapsed:.2f} s"
    )
    assert fast_result.up, fast_result.error
    assert fast_result.snapshots[0].requests_running == 1
    assert fast_result.scrape_ms < limits.timeout_s * 1000, fast_result.scrape_ms
    # The slow body's parse counts against its own deadline, and the round ends with it.
    assert not slow_result.up and slow_result.error == "timeout after 1s", slow_result.error
    assert elapsed < 2 * limits.timeout_s + 1, elapsed


# -- class 3: series identity -------------------------------------------------------------------


def test_a_series_written_twice_with_reordered_labels_is_one_series(tmp_path: Path) -> None:
    body = (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 3\n'
        f'vllm:num_requests_running{{model_name="{MODEL}",engine="0"}} 5\n'
        "# TYPE vllm:num_preemptions_total counter\n"
        f'vllm:num_preemptions_total{{engine="0",model_name="{MODEL}"}} 4\n'
        f'vllm:num_preemptions_total{{model_name="{MODEL}",engine="0"}} 4\n'
    ).encode()
    (result,), _elapsed, _rss = _scrape({"/metrics": static(body)}, ScrapeLimits(timeout_s=5))
    (row,) = _stored(tmp_path, [result])
    assert row.up and row.model == MODEL, row
    assert row.requests_running == 5  # the later sample of the same series, not 3 + 5
    assert row.preemptions_total == 4  # not summed with its reordered self: 4, never 8


# -- class 4: values outside their domain ---------------------------------------------------------


def test_values_outside_their_domain_are_stored_as_null_with_the_reason(tmp_path: Path) -> None:
    labels = f'{{engine="0",model_name="{MODEL}"}}'
    body = "".join(
        f"# TYPE {name} {kind}\n{name}{labels} {value}\n"
        for name, kind, value in [
            ("vllm:num_requests_running", "gauge", "-2"),
            ("vllm:num_requests_waiting", "gauge", "3"),
            ("vllm:kv_cache_usage_perc", "gauge", "1.7"),
            ("vllm:num_preemptions_total", "counter", "-5"),
            ("vllm:prompt_tokens_total", "counter", "+Inf"),
            ("vllm:generation_tokens_total", "counter", "12"),
        ]
    )
    body += "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 4102444800\n"
    (result,), _elapsed, _rss = _scrape(
        {"/metrics": static(body.encode())}, ScrapeLimits(timeout_s=5)
    )
    (row,) = _stored(tmp_path, [result])
    assert row.up, row.error
    # The values in their domain are kept ...
    assert (row.requests_waiting, row.generation_tokens_total) == (3, 12)
    # ... the others are NULL, never stored as sent ...
    assert row.requests_running is None and row.kv_cache_usage is None
    assert row.preemptions_total is None and row.prompt_tokens_total is None
    assert row.process_start_time is None
    # ... and the row says which and why.
    error = row.error or ""
    for reason in (
        "requests_running -2 (negative)",
        "kv_cache_usage 1.7 (outside 0–1)",
        "preemptions_total -5 (negative)",
        "prompt_tokens_total inf (not finite)",
        "process_start_time 4102444800 (in the future)",
    ):
        assert reason in error, error


# -- class 5: caps per target ---------------------------------------------------------------------


def test_a_target_exposing_twenty_thousand_models_is_refused(tmp_path: Path) -> None:
    body = "# TYPE vllm:num_requests_running gauge\n" + "".join(
        f'vllm:num_requests_running{{engine="0",model_name="model-{i}"}} 1\n' for i in range(20_000)
    )
    limits = ScrapeLimits(timeout_s=5)
    (result,), elapsed, rss = _scrape({"/metrics": static(body.encode())}, limits)
    print(f"\n20,000 models: {elapsed:.2f} s, RSS +{rss.growth / MIB:.1f} MiB, {result.error}")
    (row,) = _stored(tmp_path, [result])
    assert not row.up, row
    assert row.error == (f"refused: more than {limits.max_models} models (SCRAPE_MAX_MODELS)"), (
        row.error
    )
    assert elapsed < limits.timeout_s and rss.growth < 64 * MIB, (elapsed, rss.growth)


@pytest.mark.parametrize(
    ("cap", "reason"),
    [
        ({"max_series": 100}, "refused: more than 100 series (SCRAPE_MAX_SERIES)"),
        (
            {"max_label_bytes": 4096},
            "refused: label text above 4096 bytes (SCRAPE_MAX_LABEL_BYTES)",
        ),
    ],
    ids=["series", "label-bytes"],
)
def test_the_series_and_label_caps_store_the_target_as_failed(
    tmp_path: Path, cap: dict[str, int], reason: str
) -> None:
    limits = ScrapeLimits(timeout_s=5, **cap)
    body = "# TYPE vllm:num_requests_running gauge\n" + "".join(
        f'vllm:num_requests_running{{engine="{i}",model_name="{MODEL}"}} 1\n' for i in range(200)
    )
    (result,), _elapsed, _rss = _scrape({"/metrics": static(body.encode())}, limits)
    (row,) = _stored(tmp_path, [result])
    assert not row.up and row.error == reason, row.error
