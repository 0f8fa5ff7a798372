"""llama.cpp's slots and context per slot in a window: the server's own figures (/props) first,
the targets file's --ctx-size / --parallel otherwise."""

from perf_pipelines.analysis.window import window_stats
from perf_pipelines.targets import Target
from tests.support.windows import frame, window_bounds

URL = "http://127.0.0.1:8080/metrics"


def _stats(settings: dict[str, int], config: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    samples = [
        {"requests_running": 1.0, "generation_tokens_total": 10.0 * i, "settings": settings}
        for i in range(4)
    ]
    data = frame(samples, target="llama-a", engine="llamacpp", model=None)
    targets = {}
    if config is not None:
        targets = {"llama-a": Target(name="llama-a", url=URL, engine="llamacpp", config=config)}
    (stats,) = window_stats(data, targets, *window_bounds(data))
    return stats


def test_server_figures_need_no_targets_file_entry() -> None:
    stats = _stats({"parallel": 4, "ctx_per_slot": 8192})
    assert stats.slots == 4
    assert stats.ctx_per_slot_tokens == 8192
    assert (stats.batch_limit, stats.batch_limit_source) == (4, "parallel from server settings")


def test_servers_context_per_slot_wins_over_a_split_of_ctx_size() -> None:
    # A unified KV cache gives every slot the whole --ctx-size: 8192, not 8192 / 4.
    stats = _stats({"parallel": 4, "ctx_per_slot": 8192}, config={"ctx_size": 8192})
    assert stats.ctx_per_slot_tokens == 8192


def test_without_server_figures_ctx_size_is_split_among_slots() -> None:
    stats = _stats({}, config={"ctx_size": 8192, "parallel": 4})
    assert stats.slots == 4
    assert stats.ctx_per_slot_tokens == 2048
