from pathlib import Path

import pytest

from perf_pipelines.targets import TargetsError, dump_targets, load_targets, parse_targets

GOOD = """
targets:
  - name: llama-70b-a
    url: http://vllm-a.internal:8000/metrics
    engine: vllm
    model: meta-llama/Llama-3.1-70B-Instruct
    hardware: {gpu: H100-SXM-80GB, count: 4}
    config: {max_num_seqs: 256, gpu_memory_utilization: 0.9}
    slo: {ttft_p95_ms: 800, itl_p95_ms: 60}
  - name: qwen.small_1
    url: https://sglang-b.internal/metrics
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_design_example_loads(tmp_path: Path) -> None:
    first, second = load_targets(_write(tmp_path, GOOD))
    assert first.name == "llama-70b-a"
    assert first.engine == "vllm"
    assert first.engine_hint is not None and first.engine_hint.value == "vllm"
    assert first.hardware is not None and first.hardware.count == 4
    assert first.config["max_num_seqs"] == 256
    assert first.slo.ttft_p95_ms == 800
    assert second.engine == "auto" and second.engine_hint is None
    assert second.slo.ttft_p95_ms is None


def test_round_trip_through_dump(tmp_path: Path) -> None:
    targets = load_targets(_write(tmp_path, GOOD))
    assert load_targets(_write(tmp_path, dump_targets(targets))) == targets


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: a, url: 'http://h/metrics', colour: red}", "colour"),
        ("{name: A_B, url: 'http://h/metrics'}", "name"),
        ("{name: a, url: 'ftp://h/metrics'}", "scheme"),
        ("{name: a, url: 'file:///etc/passwd'}", "scheme"),
        ("{name: a, url: 'http://user:pw@h/metrics'}", "credentials"),
        ("{name: a, url: 'http:///metrics'}", "host"),
        ("{name: a, url: 'http://h:99999/metrics'}", "malformed"),
        ("{name: a, url: 'http://h/metrics', engine: triton}", "engine"),
        ("{name: a, url: 'http://h/metrics', hardware: {gpu: H100, count: 0}}", "count"),
        ("{name: a, url: 'http://h/metrics', slo: {ttft_p95_ms: -5}}", "ttft_p95_ms"),
    ],
)
def test_bad_entries_are_rejected_with_the_field(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(TargetsError) as excinfo:
        load_targets(_write(tmp_path, f"targets:\n  - {entry}\n"))
    assert message in str(excinfo.value)
    assert "targets.0" in str(excinfo.value)


def test_duplicate_names_are_rejected() -> None:
    data = {
        "targets": [
            {"name": "a", "url": "http://h1/metrics"},
            {"name": "a", "url": "http://h2/metrics"},
        ]
    }
    with pytest.raises(TargetsError, match="duplicate target names: a"):
        parse_targets(data)


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(TargetsError, match="scrape_interval"):
        parse_targets({"targets": [], "scrape_interval": 5})


@pytest.mark.parametrize("text", ["targets: [", "- just\n- a list\n", "\x00\x01"])
def test_unusable_files_raise_targets_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(TargetsError):
        load_targets(_write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match="cannot read targets file"):
        load_targets(tmp_path / "nope.yaml")


def test_ten_thousand_targets_load(tmp_path: Path) -> None:
    lines = ["targets:"] + [
        f"  - {{name: t{i}, url: 'http://10.0.{i // 250}.{i % 250}:8000/metrics'}}"
        for i in range(10_000)
    ]
    targets = load_targets(_write(tmp_path, "\n".join(lines)))
    assert len(targets) == 10_000
    assert targets[-1].name == "t9999"
