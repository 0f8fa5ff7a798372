"""What the rules know about one target × model: its window, engine, version, GPU, and the
current value of each setting with where that value came from.

Rules never guess a fact about the engine: defaults, accepted values and caps come from the
engine truth table (perf_pipelines/engines/truth_table.yaml) for the version the targets file
names, or — version unknown — from what every covered version accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from perf_pipelines.analysis.window import WindowStats
from perf_pipelines.engines import truth
from perf_pipelines.findings import BottleneckReport
from perf_pipelines.hardware import GIB, MODELS, Gpu, ModelProfile, resolve_gpu
from perf_pipelines.targets import Target

# Current values under another name: vLLM's cache_config_info calls kv_cache_dtype cache_dtype.
_ALIASES = {("vllm", "kv_cache_dtype"): "cache_dtype"}


@dataclass(frozen=True)
class Current:
    """A setting's value now and how we know it."""

    value: Any
    source: str  # "targets file" | "server" | "running plateau" | "engine default" | "unknown"

    @property
    def known(self) -> bool:
        return self.source in ("targets file", "server", "running plateau")

    @property
    def note(self) -> str:
        """Said in the rationale whenever the value is not known for certain."""
        if self.known and self.source != "running plateau":
            return ""
        if self.source == "running plateau":
            return " (current value inferred from the running plateau, not configured)"
        return f" (current value assumed to be the {self.source})"

    def number(self) -> float | None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None


@dataclass
class Situation:
    stats: WindowStats
    target: Target | None
    reports: dict[str, BottleneckReport]

    @property
    def engine(self) -> str:
        return self.stats.engine or ""

    @cached_property
    def version(self) -> truth.Version | None:
        text = self.target.version if self.target is not None else None
        return truth.parse_version(self.engine, text)

    @cached_property
    def limits(self) -> list[str]:
        """What the advice could not rely on, said beside it (never a reason to stay silent)."""
        said = []
        text = self.target.version if self.target is not None else None
        covered = truth.covered_versions(self.engine) if self.engine else "none"
        if text is None:
            said.append(
                f"engine version not given: only values every covered release ({covered}) accepts"
            )
        elif self.version is None:
            said.append(f"engine version {text!r} not understood: treated as unknown")
        else:
            spec = truth.load_table().engines.get(self.engine)
            if spec is not None and not spec.covers(self.version):
                said.append(
                    f"{self.engine} {text} is outside the truth table ({covered}): only values "
                    "every covered release accepts"
                )
        if self.gpu is None:
            said.append(f"{self.gpu_label}: no FP8 and no advice that needs GPU memory figures")
        return said

    @cached_property
    def gpu(self) -> Gpu | None:
        if self.target is None or self.target.hardware is None:
            return None
        return resolve_gpu(self.target.hardware.gpu)

    @property
    def gpu_facts(self) -> str:
        """The hardware facts an FP8 decision rests on, as a reader can check them."""
        gpu = self.gpu
        if gpu is None:
            return self.gpu_label
        if gpu.vendor == "nvidia":
            return f"{gpu.name}, compute capability {gpu.compute_capability}"
        return f"{gpu.name}, {gpu.vendor.upper()} {gpu.arch}"

    @property
    def gpu_count(self) -> int:
        return self.target.hardware.count if self.target and self.target.hardware else 1

    @property
    def gpu_label(self) -> str:
        if self.target is None or self.target.hardware is None:
            return "GPU not given in the targets file"
        if self.gpu is None:
            return f"unknown GPU {self.target.hardware.gpu!r}"
        return self.gpu.name

    @cached_property
    def fp8(self) -> str:
        """FP8 support of the GPU: "compute", "weight_only" or "none" (unknown GPU: "none")."""
        return truth.fp8_support(self.gpu)

    @cached_property
    def model(self) -> ModelProfile | None:
        return MODELS.get(self.stats.model or "")

    def current(self, parameter: str) -> Current:
        settings = self.stats.settings
        config = self.target.config if self.target is not None else {}
        if config.get(parameter) is not None:
            return Current(config[parameter], "targets file")
        for name in (parameter, _ALIASES.get((self.engine, parameter))):
            if name is not None and settings.get(name) is not None:
                return Current(settings[name], "server")
        default = truth.default_value(self.engine, self.version, parameter)
        if default is None:
            return Current(None, "unknown")
        return Current(default, f"{self.engine} default")

    def fact(self, parameter: str) -> truth.FlagFact | None:
        return truth.flag_fact(self.engine, self.version, parameter)

    def accepts(self, parameter: str, value: object) -> str | None:
        """None when the engine accepts `value` here, else the reason it does not. FP8 weights
        on a GPU without FP8 compute are accepted where they run weight-only: the rung says so."""
        settings = {**self.stats.settings, **(self.target.config if self.target else {})}
        return truth.check_value(
            self.engine,
            self.version,
            parameter,
            value,
            self.gpu,
            settings=settings,
            allow_weight_only=parameter in ("quantization", "quantize"),
        )

    # --- what the window measured, in the units the step sizes need -----------------------

    # What analysis/window.py measured, under the names the step sizes read: means over
    # observed wall time (each sample weighed by the seconds it stands for) and per-request
    # token counts over the window's finished requests.
    @property
    def running_mean(self) -> float | None:
        return self.stats.running_mean

    @property
    def waiting_mean(self) -> float:
        return self.stats.waiting_mean or 0.0

    @property
    def kv_mean(self) -> float | None:
        return self.stats.kv_usage_mean

    @property
    def kv_exported(self) -> bool:
        return self.stats.kv_usage_source == "kv_cache_usage" and self.kv_mean is not None

    @property
    def prompt_mean(self) -> float | None:
        return self.stats.prompt_tokens_per_request

    @property
    def output_mean(self) -> float | None:
        return self.stats.generation_tokens_per_request

    @cached_property
    def tokens_per_sequence(self) -> tuple[float, str] | None:
        """KV tokens one running sequence holds on average, and how that was measured."""
        in_use, running = self.stats.kv_tokens_in_use_mean, self.running_mean
        if in_use and running and running >= 1:
            used = in_use / running
            return used, (
                f"{self.kv_mean or 0:.0%} of {self.stats.kv_capacity_tokens or 0:,.0f} KV tokens "
                f"over {running:.1f} running = {used:,.0f} tokens per sequence"
            )
        if self.prompt_mean is not None:
            held = self.prompt_mean + 0.5 * (self.output_mean or 0.0)
            return held, (
                f"mean prompt {self.prompt_mean:,.0f} + half the mean output "
                f"{self.output_mean or 0.0:,.0f} = {held:,.0f} tokens per sequence"
            )
        return None

    def kv_bytes_per_token(self, kv_dtype: object) -> float | None:
        if self.model is None:
            return None
        return self.model.kv_bytes_per_token(1.0 if str(kv_dtype).startswith("fp8") else 2.0)

    @property
    def total_gpu_bytes(self) -> float | None:
        return None if self.gpu is None else self.gpu.memory_gib * GIB * self.gpu_count
