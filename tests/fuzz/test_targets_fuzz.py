"""Property tests of the targets-file loader: for any YAML text, any bytes and any mapping, the
loader returns validated targets or raises `TargetsError` (which the asset turns into a clear
Dagster failure) — never another exception, and never a target the collector must not scrape.

Example-based cases (each rejected field, duplicates, 10,000 targets) are in
tests/test_targets.py; these cover what nobody thought to write down.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_pipelines.targets import Target, TargetsError, load_targets, parse_targets

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Everything PyYAML's safe loader can produce: scalars of every tag, bytes (!!binary), dates,
# sets, non-string keys, deep nesting.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.binary(max_size=10)
    | st.dates()
    | st.datetimes(timezones=st.none() | st.just(dt.UTC))
)
keys = st.text(max_size=12) | st.integers() | st.booleans() | st.none() | st.floats()
yaml_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=4)
        | st.frozensets(st.text(max_size=5), max_size=3)
    ),
    max_leaves=20,
)

URLS = st.sampled_from(
    [
        "http://h/metrics",
        "https://10.0.0.1:8443/metrics",
        "http://[::1]:8000/metrics",
        "http://user:pw@h/metrics",
        "http://:pw@h/metrics",
        "http://user@h/metrics",
        "ftp://h/metrics",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://h:70/_",
        "http:///metrics",
        "http://h:99999/metrics",
        "http://[::1/metrics",
        "http://h/metrics#frag",
        "http://h/metrics?token=x",
        "http://h\x00/metrics",
        "http://h/metrics\r\nX-Injected: 1",
        "http://h /metrics",
        "\thttp://h/metrics",
        "HTTP://H/metrics",
        "//h/metrics",
        "h/metrics",
        "",
    ]
) | st.text(max_size=40)

entry_fields = {
    "name": st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True) | st.text(max_size=10),
    "url": URLS,
    "engine": st.sampled_from(["vllm", "sglang", "tgi", "llamacpp", "auto", "triton", "VLLM"]),
    "model": st.text(max_size=20) | st.none(),
    "hardware": st.fixed_dictionaries(
        {"gpu": st.text(max_size=10)}, optional={"count": st.integers(-5, 5000)}
    )
    | yaml_values,
    "config": st.dictionaries(st.text(max_size=8), yaml_values, max_size=3) | yaml_values,
    "slo": st.dictionaries(
        st.sampled_from(["ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms", "p99"]),
        st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5),
        max_size=3,
    )
    | yaml_values,
    "extra_key": yaml_values,
}
entries = st.fixed_dictionaries(
    {}, optional={key: value for key, value in entry_fields.items()}
) | st.fixed_dictionaries({"name": entry_fields["name"], "url": URLS})
documents = (
    st.fixed_dictionaries({"targets": st.lists(entries | yaml_values, max_size=5)})
    | st.fixed_dictionaries(
        {"targets": st.lists(entries, max_size=5)}, optional={"other": yaml_values}
    )
    | yaml_values
)


def assert_scrapable(targets: list[Target]) -> None:
    """Whatever the loader accepts is safe for the collector to fetch."""
    names = [t.name for t in targets]
    assert len(names) == len(set(names))
    for target in targets:
        parts = urlsplit(target.url)
        assert parts.scheme in ("http", "https")
        assert parts.hostname
        assert parts.username is None and parts.password is None
        assert not any(ord(c) < 0x21 or c == "\x7f" for c in target.url), repr(target.url)
        for value in (target.slo.ttft_p95_ms, target.slo.itl_p95_ms, target.slo.e2e_p95_ms):
            assert value is None or (math.isfinite(value) and value > 0)


@FUZZ
@given(documents)
def test_parse_targets_raises_only_targets_error(data: object) -> None:
    try:
        targets = parse_targets(data)
    except TargetsError as exc:
        assert str(exc).startswith("targets")
        return
    assert_scrapable(targets)


@FUZZ
@given(documents)
def test_load_targets_of_dumped_yaml_raises_only_targets_error(
    tmp_path: Path, data: object
) -> None:
    path = tmp_path / "targets.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as YAML text (e.g. lone surrogates)
    try:
        targets = load_targets(path)
    except TargetsError:
        return
    assert_scrapable(targets)


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda t: t.encode("utf-8", "replace")))
def test_load_targets_of_arbitrary_bytes_raises_only_targets_error(
    tmp_path: Path, body: bytes
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_bytes(body)
    with contextlib.suppress(TargetsError):
        assert_scrapable(load_targets(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Found by fuzzing: a 5,000-digit integer made PyYAML raise ValueError (int limit).
        (
            "targets:\n  - {name: a, url: 'http://h/m', slo: {ttft_p95_ms: " + "9" * 5000 + "}}\n",
            "not valid YAML",
        ),
        ("targets: " + "[" * 100_000 + "]" * 100_000 + "\n", "not valid YAML"),
        ("targets: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
        ("targets:\n  - {name: a, url: 'http://h/m', slo: {ttft_p95_ms: .inf}}\n", "ttft_p95_ms"),
        ('targets:\n  - {name: a, url: "http://h/m\\r\\nX-Injected: 1"}\n', "control"),
        ('targets:\n  - {name: a, url: "http://h\\0/m"}\n', "control"),
        ("targets:\n  - {name: a, url: 'http://h /m'}\n", "control"),
    ],
)
def test_hostile_files_are_refused_with_targets_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TargetsError, match=message):
        load_targets(path)


def test_alias_bombs_load_in_bounded_time(tmp_path: Path) -> None:
    """Aliases are shared, not expanded, and `config` is not walked: a 10^9-leaf bomb is cheap."""
    bomb = "b: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"b{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )
    path = tmp_path / "targets.yaml"
    path.write_text(bomb + "targets: []\n")
    with pytest.raises(TargetsError, match="Extra inputs"):
        load_targets(path)
