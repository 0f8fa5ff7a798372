"""The engine truth table: what each engine accepts for each flag the agent may recommend.

Data: `truth_table.yaml` beside this module (every fact with the repository, file and tag it was
read from). This module loads it once, checks it, and answers three questions:

- `flag_fact(engine, version, parameter)`: the flag, its kind, range or choices and default at
  that version; for an unknown version (or one outside what was read) the conservative
  intersection over every covered version, marked `covered=False`.
- `check_value(engine, version, parameter, value, gpu)`: None when the engine accepts the value
  at that version on that GPU, else a one-line reason.
- `default_value(...)`, `covered_versions(...)`, `fp8_support(gpu)`.

Pure Python (no Dagster), safe to call from anywhere; the table is immutable once loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache, total_ordering
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from perf_pipelines.hardware import FP8_COMPUTE, FP8_NONE, FP8_WEIGHT_ONLY, Gpu

KINDS = frozenset({"float", "int", "enum", "bool"})
REQUIREMENTS = frozenset({"fp8_compute", "fp8_compute_nvidia", "fp8_any"})
_CC_REQUIREMENT = re.compile(r"^cc>=(\d+(?:\.\d+)?)$")
_ENGINE_ALIASES = {
    "vllm": "vllm",
    "sglang": "sglang",
    "tgi": "tgi",
    "text-generation-inference": "tgi",
    "llamacpp": "llamacpp",
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
    "llama_cpp": "llamacpp",
}
_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+){1,3})")
_BUILD = re.compile(r"\s*(?:version:?\s*)?b?(\d{1,7})(?![\d.])", re.IGNORECASE)
_TRUE = frozenset({"true", "1", "on", "yes", "enabled"})
_FALSE = frozenset({"false", "0", "off", "no", "disabled"})
_MAX_CHOICES_SHOWN = 12


class TruthTableError(ValueError):
    """The YAML does not hold a valid truth table."""


@total_ordering
@dataclass(frozen=True)
class Version:
    """A release (0.10.2) or, for llama.cpp, a build number (b4567); comparable within an engine."""

    parts: tuple[int, ...]
    build: bool = False

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def _key(self) -> tuple[int, ...]:
        # 0.10 == 0.10.0: trailing zeros do not make a version newer
        parts = list(self.parts)
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        return tuple(parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key() and self.build == other.build

    def __hash__(self) -> int:
        return hash((self._key(), self.build))

    def __str__(self) -> str:
        return f"b{self.parts[0]}" if self.build else ".".join(map(str, self.parts))


def _engine_key(engine: str) -> str | None:
    return _ENGINE_ALIASES.get(str(engine).strip().lower())


def parse_version(engine: str, text: str | None) -> Version | None:
    """ "0.10.2", "v0.10.2", "0.8.5.post1", "3.3.4", or for llama.cpp "b4567"/"4567"/"version:
    4567 (abc)"; None when the text (or the engine) is not understood."""
    key = _engine_key(engine)
    if key is None or not isinstance(text, str) or len(text) > 200:
        return None
    if key == "llamacpp":
        match = _BUILD.match(text)
        return Version((int(match.group(1)),), build=True) if match else None
    match = _RELEASE.match(text)
    if match is None:
        return None
    rest = text[match.end() :].strip()
    if rest[:1].isdigit():
        return None
    return Version(tuple(int(part) for part in match.group(1).split(".")))


@dataclass(frozen=True)
class ValueSpec:
    since: Version
    until: Version | None
    hardware: str | None
    requires: Mapping[str, tuple[str, ...]]

    def holds_at(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)


@dataclass(frozen=True)
class RangeSpec:
    since: Version
    until: Version | None
    kind: str
    minimum: float | None
    maximum: float | None
    min_inclusive: bool
    max_inclusive: bool
    choices: tuple[str, ...] | None  # a range's own choices (enum kinds without `values`)
    default: object
    default_note: str | None
    special: tuple[float, ...]
    source: str
    note: str | None

    def holds_at(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)


@dataclass(frozen=True)
class ParameterSpec:
    engine: str
    name: str
    flag: str
    aliases: tuple[str, ...]
    nullable: bool
    restart_required: bool
    values: Mapping[str, ValueSpec]
    values_source: str | None
    hardware_source: str | None
    ranges: tuple[RangeSpec, ...]
    note: str | None
    hints: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class EngineSpec:
    key: str
    display: str
    covered_since: Version
    covered_through: Version | None  # None: open-ended (see through_note)
    through_note: str | None
    releases_read: str
    notes: tuple[str, ...]
    parameters: Mapping[str, ParameterSpec]

    def covers(self, version: Version) -> bool:
        upper_ok = self.covered_through is None or version <= self.covered_through
        return self.covered_since <= version and upper_ok


@dataclass(frozen=True)
class TruthTable:
    engines: Mapping[str, EngineSpec]
    requirements: Mapping[str, str]


@dataclass(frozen=True)
class FlagFact:
    """What `engine` accepts for `parameter` at a version (or, `covered=False`, at every version
    the table covers: the intersection of choices and the narrowest range)."""

    engine: str
    parameter: str
    flag: str
    kind: str
    minimum: float | None
    maximum: float | None
    min_inclusive: bool
    max_inclusive: bool
    choices: tuple[str, ...] | None
    default: object
    default_note: str | None
    restart_required: bool
    value_hardware: Mapping[str, str]
    source: str
    since: Version | None
    until: Version | None
    aliases: tuple[str, ...] = ()
    special: tuple[float, ...] = ()
    nullable: bool = False
    value_requires: Mapping[str, Mapping[str, tuple[str, ...]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    note: str | None = None
    version: Version | None = None
    covered: bool = True


# --------------------------------------------------------------------------- loading


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TruthTableError(f"{where}: `{key}` must be a non-empty string, got {value!r}")
    return value


def _opt_text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _version(engine: str, raw: object, where: str) -> Version:
    version = parse_version(engine, str(raw)) if raw is not None else None
    if version is None:
        raise TruthTableError(f"{where}: version {raw!r} is not a {engine} version")
    return version


def _opt_version(engine: str, raw: object, where: str) -> Version | None:
    return None if raw is None else _version(engine, raw, where)


def _number(raw: object, where: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TruthTableError(f"{where}: expected a number, got {raw!r}")
    return float(raw)


def _requires(raw: object, where: str) -> Mapping[str, tuple[str, ...]]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise TruthTableError(f"{where}: `requires` must map a parameter to accepted values")
    return MappingProxyType({str(k): tuple(str(v).lower() for v in vs) for k, vs in raw.items()})


def _value_spec(engine: str, raw: object, where: str) -> ValueSpec:
    if not isinstance(raw, Mapping):
        raise TruthTableError(f"{where}: expected a mapping with `since`, got {raw!r}")
    hardware = raw.get("hardware")
    return ValueSpec(
        since=_version(engine, raw.get("since"), where),
        until=_opt_version(engine, raw.get("until"), where),
        hardware=str(hardware) if hardware is not None else None,
        requires=_requires(raw.get("requires"), where),
    )


def _range_spec(engine: str, kind: str, raw: Mapping[str, Any], where: str) -> RangeSpec:
    choices = raw.get("choices")
    special = raw.get("special") or []
    return RangeSpec(
        since=_version(engine, raw.get("since"), where),
        until=_opt_version(engine, raw.get("until"), where),
        kind=str(raw.get("kind", kind)),
        minimum=_number(raw.get("minimum"), where),
        maximum=_number(raw.get("maximum"), where),
        min_inclusive=bool(raw.get("min_inclusive", True)),
        max_inclusive=bool(raw.get("max_inclusive", True)),
        choices=tuple(str(c) for c in choices) if choices is not None else None,
        default=raw.get("default"),
        default_note=_opt_text(raw, "default_note"),
        special=tuple(float(s) for s in special),
        source=_text(raw, "source", where),
        note=_opt_text(raw, "note"),
    )


def _parameter_spec(engine: str, name: str, raw: Mapping[str, Any]) -> ParameterSpec:
    where = f"{engine}.{name}"
    kind = str(raw.get("kind", ""))
    ranges = raw.get("ranges")
    if not isinstance(ranges, list) or not ranges:
        raise TruthTableError(f"{where}: needs a non-empty `ranges` list")
    values = raw.get("values") or {}
    return ParameterSpec(
        engine=engine,
        name=name,
        flag=_text(raw, "flag", where),
        aliases=tuple(str(a) for a in raw.get("aliases") or ()),
        nullable=bool(raw.get("nullable", False)),
        restart_required=bool(raw.get("restart_required", True)),
        values=MappingProxyType(
            {str(v): _value_spec(engine, spec, f"{where}.values.{v}") for v, spec in values.items()}
        ),
        values_source=_opt_text(raw, "values_source"),
        hardware_source=_opt_text(raw, "hardware_source"),
        ranges=tuple(
            _range_spec(engine, kind, r, f"{where}.ranges[{i}]") for i, r in enumerate(ranges)
        ),
        note=_opt_text(raw, "note"),
        hints=MappingProxyType({str(k): str(v) for k, v in (raw.get("hints") or {}).items()}),
    )


def _engine_spec(key: str, raw: Mapping[str, Any]) -> EngineSpec:
    covered = raw.get("covered") or {}
    parameters = raw.get("parameters") or {}
    return EngineSpec(
        key=key,
        display=_text(raw, "display", key),
        covered_since=_version(key, covered.get("since"), f"{key}.covered"),
        covered_through=_opt_version(key, covered.get("through"), f"{key}.covered"),
        through_note=_opt_text(covered, "through_note"),
        releases_read=_text(raw, "releases_read", key),
        notes=tuple(str(n) for n in raw.get("notes") or ()),
        parameters=MappingProxyType(
            {str(name): _parameter_spec(key, str(name), spec) for name, spec in parameters.items()}
        ),
    )


def parse_table(raw: object) -> TruthTable:
    """Build and check a table from parsed YAML; raises `TruthTableError` listing every problem."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("engines"), Mapping):
        raise TruthTableError("the truth table needs an `engines` mapping")
    engines = {}
    for key, spec in raw["engines"].items():
        if _engine_key(str(key)) != key:
            raise TruthTableError(f"unknown engine key {key!r}")
        engines[str(key)] = _engine_spec(str(key), spec)
    table = TruthTable(
        engines=MappingProxyType(engines),
        requirements=MappingProxyType(dict(raw.get("requirements") or {})),
    )
    problems = validate(table)
    if problems:
        raise TruthTableError("; ".join(problems))
    return table


@cache
def load_table() -> TruthTable:
    """The packaged table, read and checked once per process."""
    text = resources.files("perf_pipelines.engines").joinpath("truth_table.yaml").read_text()
    return parse_table(yaml.safe_load(text))


# --------------------------------------------------------------------------- validation

_SOURCE = re.compile(r"\S+/\S+ .*\S+\.\w+.* @ \S+")


def _source_problems(where: str, source: str | None) -> list[str]:
    if source is None:
        return []
    if not _SOURCE.search(source):
        return [f"{where}: source {source!r} lacks 'owner/repo path/file.ext … @ tag'"]
    return []


def _hardware_problems(where: str, requirement: str | None) -> list[str]:
    if requirement is None or requirement in REQUIREMENTS or _CC_REQUIREMENT.match(requirement):
        return []
    return [f"{where}: unknown hardware requirement {requirement!r}"]


def _within(
    value: float,
    bounds: tuple[float | None, bool, float | None, bool],
    special: tuple[float, ...] = (),
) -> bool:
    minimum, min_inclusive, maximum, max_inclusive = bounds
    if value in special:
        return True
    if minimum is not None and (value < minimum or (value == minimum and not min_inclusive)):
        return False
    return not (
        maximum is not None and (value > maximum or (value == maximum and not max_inclusive))
    )


def _in_numeric_range(spec: RangeSpec, value: float) -> bool:
    bounds = (spec.minimum, spec.min_inclusive, spec.maximum, spec.max_inclusive)
    return _within(value, bounds, spec.special)


def _range_problems(param: ParameterSpec, index: int, spec: RangeSpec) -> list[str]:
    where = f"{param.engine}.{param.name}.ranges[{index}]"
    problems = _source_problems(where, spec.source)
    if spec.kind not in KINDS:
        problems.append(f"{where}: kind {spec.kind!r} is not one of {sorted(KINDS)}")
    if spec.until is not None and spec.until <= spec.since:
        problems.append(f"{where}: until {spec.until} is not after since {spec.since}")
    if spec.minimum is not None and spec.maximum is not None and spec.minimum > spec.maximum:
        problems.append(f"{where}: minimum {spec.minimum} > maximum {spec.maximum}")
    default = spec.default
    if default is None:
        return problems
    if spec.kind in ("int", "float"):
        if not isinstance(default, int | float) or isinstance(default, bool):
            problems.append(f"{where}: default {default!r} is not a number")
        elif not _in_numeric_range(spec, float(default)):
            problems.append(f"{where}: default {default!r} is outside its own range")
    elif spec.kind == "bool" and not isinstance(default, bool):
        problems.append(f"{where}: default {default!r} is not a bool")
    elif spec.kind == "enum":
        choices = spec.choices or tuple(
            v for v, vs in param.values.items() if vs.holds_at(spec.since)
        )
        if str(default) not in choices:
            problems.append(f"{where}: default {default!r} is not among {choices}")
    return problems


def _parameter_problems(engine: EngineSpec, param: ParameterSpec) -> list[str]:
    where = f"{engine.key}.{param.name}"
    problems: list[str] = []
    for source in (param.values_source, param.hardware_source):
        if source is not None and " @ " not in source:
            problems.append(f"{where}: source {source!r} names no tag")
    previous: RangeSpec | None = None
    for index, spec in enumerate(param.ranges):
        problems += _range_problems(param, index, spec)
        if not engine.covers(spec.since):
            problems.append(f"{where}: range since {spec.since} is outside the covered versions")
        if previous is not None and (previous.until is None or previous.until > spec.since):
            problems.append(f"{where}: ranges {index - 1} and {index} overlap or are unordered")
        previous = spec
    for value, value_spec in param.values.items():
        if value_spec.until is not None and value_spec.until <= value_spec.since:
            problems.append(f"{where}.values.{value}: until is not after since")
        problems += _hardware_problems(f"{where}.values.{value}", value_spec.hardware)
    if not param.values and any(r.choices is None for r in param.ranges if r.kind == "enum"):
        problems.append(f"{where}: enum without `values` or range `choices`")
    return problems


def validate(table: TruthTable) -> list[str]:
    """Every problem found in the table (empty when it is sound)."""
    problems: list[str] = []
    for engine in table.engines.values():
        if engine.covered_through is not None and engine.covered_through < engine.covered_since:
            problems.append(f"{engine.key}: covered.through is before covered.since")
        for param in engine.parameters.values():
            problems += _parameter_problems(engine, param)
    return problems


# --------------------------------------------------------------------------- queries


def _parameter(engine: str, parameter: str) -> tuple[EngineSpec, ParameterSpec] | None:
    key = _engine_key(engine)
    if key is None:
        return None
    spec = load_table().engines.get(key)
    if spec is None or parameter not in spec.parameters:
        return None
    return spec, spec.parameters[parameter]


def _fact(
    param: ParameterSpec,
    spec: RangeSpec,
    choices: tuple[str, ...] | None,
    version: Version | None,
) -> FlagFact:
    sources = [spec.source]
    if param.values_source and choices is not None and spec.choices is None:
        sources.append(f"choices: {param.values_source}")
    hardware = {v: s.hardware for v, s in param.values.items() if s.hardware is not None}
    requires = {v: s.requires for v, s in param.values.items() if s.requires}
    return FlagFact(
        engine=param.engine,
        parameter=param.name,
        flag=param.flag,
        kind=spec.kind,
        minimum=spec.minimum,
        maximum=spec.maximum,
        min_inclusive=spec.min_inclusive,
        max_inclusive=spec.max_inclusive,
        choices=choices,
        default=spec.default,
        default_note=spec.default_note,
        restart_required=param.restart_required,
        value_hardware=MappingProxyType(hardware),
        source="; ".join(sources),
        since=spec.since,
        until=spec.until,
        aliases=param.aliases,
        special=spec.special,
        nullable=param.nullable,
        value_requires=MappingProxyType(requires),
        note=" ".join(n for n in (spec.note, param.note) if n) or None,
        version=version,
    )


def _choices_at(param: ParameterSpec, spec: RangeSpec, version: Version) -> tuple[str, ...] | None:
    if spec.kind != "enum":
        return None
    if spec.choices is not None:
        return spec.choices
    return tuple(v for v, vs in param.values.items() if vs.holds_at(version))


def _tightest(specs: Iterable[RangeSpec]) -> tuple[float | None, bool, float | None, bool]:
    minimum: float | None = None
    min_inclusive = True
    maximum: float | None = None
    max_inclusive = True
    for spec in specs:
        if spec.minimum is not None and (
            minimum is None
            or spec.minimum > minimum
            or (spec.minimum == minimum and not spec.min_inclusive)
        ):
            minimum, min_inclusive = spec.minimum, spec.min_inclusive
        if spec.maximum is not None and (
            maximum is None
            or spec.maximum < maximum
            or (spec.maximum == maximum and not spec.max_inclusive)
        ):
            maximum, max_inclusive = spec.maximum, spec.max_inclusive
    return minimum, min_inclusive, maximum, max_inclusive


def _spans_coverage(engine: EngineSpec, param: ParameterSpec) -> bool:
    """Whether the flag exists at every covered version (its ranges leave no gap)."""
    if param.ranges[0].since > engine.covered_since:
        return False
    last = param.ranges[-1]
    if last.until is not None and (
        engine.covered_through is None or last.until <= engine.covered_through
    ):
        return False
    return all(a.until == b.since for a, b in zip(param.ranges, param.ranges[1:], strict=False))


def _conservative(
    engine: EngineSpec, param: ParameterSpec, version: Version | None
) -> FlagFact | None:
    """The fact that holds at every covered version, or None when there is none (the flag is
    missing at some version, or its kind changed)."""
    if not _spans_coverage(engine, param) or len({r.kind for r in param.ranges}) != 1:
        return None
    first = param.ranges[0]
    minimum, min_inclusive, maximum, max_inclusive = _tightest(param.ranges)
    defaults = {repr(r.default) for r in param.ranges}
    choices: tuple[str, ...] | None = None
    if first.kind == "enum":
        sets = [set(r.choices) for r in param.ranges if r.choices is not None]
        if param.values:
            sets.append(
                {
                    v
                    for v, vs in param.values.items()
                    if vs.since <= engine.covered_since and vs.until is None
                }
            )
        common = set.intersection(*sets) if sets else set()
        ordered = [c for r in param.ranges for c in (r.choices or ())] + list(param.values)
        choices = tuple(dict.fromkeys(c for c in ordered if c in common))
    special = set(first.special).intersection(*(r.special for r in param.ranges))
    merged = RangeSpec(
        since=engine.covered_since,
        until=None,
        kind=first.kind,
        minimum=minimum,
        maximum=maximum,
        min_inclusive=min_inclusive,
        max_inclusive=max_inclusive,
        choices=choices,
        default=first.default if len(defaults) == 1 else None,
        default_note=(
            first.default_note
            if len(defaults) == 1
            else "differs by version: " + ", ".join(f"{r.default!r}" for r in param.ranges)
        ),
        special=tuple(sorted(special)),
        source="; ".join(dict.fromkeys(r.source for r in param.ranges)),
        note=" ".join(dict.fromkeys(r.note for r in param.ranges if r.note)) or None,
    )
    fact = _fact(param, merged, choices, version)
    return replace(fact, since=None, until=None, covered=False)


def flag_fact(engine: str, version: Version | None, parameter: str) -> FlagFact | None:
    """The fact for `parameter` at `version`; None for an unknown engine or parameter, or a
    flag the engine does not have at that version. An unknown version, or one outside what the
    table covers, gets the conservative intersection (`covered=False`)."""
    found = _parameter(engine, parameter)
    if found is None:
        return None
    spec, param = found
    if version is None or version.build != (spec.key == "llamacpp") or not spec.covers(version):
        return _conservative(spec, param, version)
    for range_spec in param.ranges:
        if range_spec.holds_at(version):
            return _fact(param, range_spec, _choices_at(param, range_spec, version), version)
    return None


def default_value(engine: str, version: Version | None, parameter: str) -> object | None:
    """The engine's default when it is a constant at that version; None when it is derived at
    start-up (see `FlagFact.default_note`) or not known."""
    fact = flag_fact(engine, version, parameter)
    return None if fact is None else fact.default


def covered_versions(engine: str) -> str:
    """Human text such as "0.6.0 – 0.34.0"; "" for an unknown engine."""
    key = _engine_key(engine)
    spec = load_table().engines.get(key) if key else None
    if spec is None:
        return ""
    through = str(spec.covered_through) if spec.covered_through else "newest read"
    return f"{spec.covered_since} – {through}"


def fp8_support(gpu: Gpu | None) -> str:
    """ "compute" | "weight_only" | "none"; an unknown GPU is "none" (conservative)."""
    return FP8_NONE if gpu is None else gpu.fp8_support


# --------------------------------------------------------------------------- checking


def _label(engine: str, version: Version | None) -> str:
    key = _engine_key(engine) or engine
    spec = load_table().engines.get(key)
    display = spec.display if spec else engine
    if version is None:
        return f"{display} (version unknown)"
    if spec is not None and not spec.covers(version):
        return f"{display} {version} (not covered: {covered_versions(key)})"
    return f"{display} {version}"


def _shown(choices: tuple[str, ...]) -> str:
    shown = ", ".join(choices[:_MAX_CHOICES_SHOWN])
    return shown + (f", … ({len(choices)} in all)" if len(choices) > _MAX_CHOICES_SHOWN else "")


def _number_value(value: object, kind: str) -> float | None:
    if isinstance(value, bool):
        return None
    number: float
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number) or (kind == "int" and not number.is_integer()):
        return None
    return number


def _range_text(fact: FlagFact) -> str:
    low = "" if fact.minimum is None else f"{'≥' if fact.min_inclusive else '>'} {fact.minimum:g}"
    high = "" if fact.maximum is None else f"{'≤' if fact.max_inclusive else '<'} {fact.maximum:g}"
    return " and ".join(p for p in (low, high) if p) or "any value"


def _value_problem(fact: FlagFact, value: object) -> str | None:
    """Why the value is not of the flag's kind, range or choices (None when it is)."""
    if fact.kind in ("int", "float"):
        number = _number_value(value, fact.kind)
        if number is None:
            return f"takes {'an integer' if fact.kind == 'int' else 'a number'}, not {value!r}"
        if number in fact.special:
            return None
        bounds = (fact.minimum, fact.min_inclusive, fact.maximum, fact.max_inclusive)
        inside = _within(number, bounds)
        return None if inside else f"accepts {_range_text(fact)}, not {value!r}"
    if fact.kind == "bool":
        if isinstance(value, bool) or str(value).strip().lower() in _TRUE | _FALSE:
            return None
        return f"is a switch (true/false), not {value!r}"
    choices = fact.choices or ()
    if str(value) in choices:
        return None
    return f"accepts {_shown(choices) or 'no value at every covered version'}, not {value!r}"


def _hardware_problem(requirement: str, gpu: Gpu | None, allow_weight_only: bool) -> str | None:
    if gpu is None:
        return f"needs {requirement} hardware and the GPU is unknown"
    support = gpu.fp8_support
    if requirement in ("fp8_compute", "fp8_compute_nvidia"):
        if requirement == "fp8_compute_nvidia" and gpu.vendor != "nvidia":
            return f"is not supported on {gpu.name} ({gpu.vendor.upper()}): NVIDIA only"
        if support != FP8_COMPUTE:
            return f"needs FP8 compute; {gpu.name} has FP8 support {support!r}"
        return None
    if requirement == "fp8_any":
        if support == FP8_COMPUTE or (support == FP8_WEIGHT_ONLY and allow_weight_only):
            return None
        if support == FP8_WEIGHT_ONLY:
            return f"would run only weight-only (W8A16, FP8 Marlin) on {gpu.name}: no FP8 compute"
        return f"needs FP8 support; {gpu.name} has none"
    match = _CC_REQUIREMENT.match(requirement)
    if match is None:
        return f"has an unknown hardware requirement {requirement!r}"
    if gpu.vendor != "nvidia":
        return f"needs compute capability ≥ {match.group(1)}, not verified for {gpu.name}"
    if gpu.compute_capability < float(match.group(1)):
        have = gpu.compute_capability
        return f"needs compute capability ≥ {match.group(1)}; {gpu.name} has {have}"
    return None


def _requires_problem(
    fact: FlagFact, value: str, settings: Mapping[str, object] | None
) -> str | None:
    needs = fact.value_requires.get(value)
    if not needs:
        return None
    for other, accepted in needs.items():
        current = None if settings is None else settings.get(other)
        if current is None or str(current).strip().lower() not in accepted:
            shown = "unset" if current is None else repr(current)
            return f"needs {other} in {list(accepted)} (it is {shown})"
    return None


def check_value(
    engine: str,
    version: Version | None,
    parameter: str,
    value: object,
    gpu: Gpu | None,
    *,
    settings: Mapping[str, object] | None = None,
    allow_weight_only: bool = False,
) -> str | None:
    """None when the engine accepts `value` for `parameter` at `version` on `gpu`; else a
    one-line reason naming the source. FP8 values on an unknown GPU are rejected; "fp8_any"
    values on a GPU that would run them weight-only only with `allow_weight_only`. `settings`
    (the other parameters' values) is consulted for values that need another flag (a quantized
    llama.cpp V cache needs flash attention)."""
    label = _label(engine, version)
    if _parameter(engine, parameter) is None:
        return f"{label}: no parameter {parameter!r} in the truth table"
    fact = flag_fact(engine, version, parameter)
    if fact is None:
        return f"{label}: {parameter} is not a flag at every version in question"
    if value is None and fact.nullable:
        return None
    param = _parameter(engine, parameter)
    assert param is not None
    spec = param[1]
    source = fact.source
    problem = _value_problem(fact, value)
    if problem is not None:
        hint = spec.hints.get(str(value))
        problem += f"; {hint}" if hint else ""
    elif fact.kind == "enum":
        requirement = fact.value_hardware.get(str(value))
        if requirement is not None:
            problem = _hardware_problem(requirement, gpu, allow_weight_only)
            if problem and spec.hardware_source:
                source = f"{spec.hardware_source}; {source}"
        problem = problem or _requires_problem(fact, str(value), settings)
    if problem is None:
        return None
    return f"{label} {fact.flag} {problem} (source: {source})"
