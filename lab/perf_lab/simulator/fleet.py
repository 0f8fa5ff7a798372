"""A fleet of simulated servers on one clock, with restarts that behave like real ones.

The clock is either real (wall time × speed: for the demo and Dagster scraping) or virtual
(`advance()`: for evaluation, ten simulated minutes in a fraction of the time). Servers are
stepped lazily up to "now" when they are read, so an idle fleet costs nothing.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from perf_lab.simulator.exposition import BUCKETS, render
from perf_lab.simulator.model import ServerModel, StartupError, Workload
from perf_lab.simulator.settings import SettingsError, to_knobs, validate_settings
from perf_pipelines.hardware import gpu_by_name, model_by_name

RESTART_SECONDS = 5.0  # simulated time a server is unavailable after a settings change
MAX_CATCH_UP_SECONDS = 600.0  # a server unread for longer skips ahead instead of replaying


class UnknownServerError(KeyError):
    pass


class Unavailable(RuntimeError):
    """The server is restarting or failed to start (HTTP 503 with this reason)."""


@dataclass
class ServerSpec:
    """What a scenario or fleet file declares for one server."""

    name: str
    engine: str
    model: str
    gpu: str
    gpu_count: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    workload: Workload = field(default_factory=Workload)
    slo: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    expected_bottlenecks: tuple[str, ...] = ()


class SimulatedServer:
    def __init__(self, spec: ServerSpec, now: float, tick: float, seed: int) -> None:
        self.spec = spec
        self.tick = tick
        self.seed = seed
        self.settings = validate_settings(spec.engine, spec.settings)
        self.restarts = 0
        self.available_at = now
        self.startup_error: str | None = None
        self.model: ServerModel | None = None
        self._start(now)

    def _start(self, now: float) -> None:
        spec = self.spec
        knobs = to_knobs(spec.engine, self.settings, spec.gpu_count)
        try:
            self.model = ServerModel(
                gpu_by_name(spec.gpu),
                spec.gpu_count,
                model_by_name(spec.model),
                knobs,
                BUCKETS[spec.engine],
                spec.workload,
                start_time=now,
                seed=self.seed + self.restarts,
            )
            ttft_ms, itl_ms = spec.slo.get("ttft_p95_ms"), spec.slo.get("itl_p95_ms")
            self.model.slo_ttft_s = None if ttft_ms is None else ttft_ms / 1000
            self.model.slo_tpot_s = None if itl_ms is None else itl_ms / 1000
            self.startup_error = None
        except StartupError as exc:
            self.model = None
            self.startup_error = str(exc)

    def restart(self, settings: dict[str, Any], now: float) -> None:
        """Apply new flags: the process restarts, counters start again from zero."""
        self.settings = validate_settings(self.spec.engine, settings, base=self.settings)
        self.restarts += 1
        self.available_at = now + RESTART_SECONDS
        self._start(self.available_at)

    def set_workload(self, workload: Workload) -> None:
        self.spec.workload = workload
        if self.model is not None:
            self.model.workload = workload

    def advance(self, now: float) -> None:
        model = self.model
        if model is None or now < self.available_at:
            return
        if now - model.now > MAX_CATCH_UP_SECONDS:
            model.now = now - MAX_CATCH_UP_SECONDS
        model.advance(now, self.tick)

    def exposition(self, now: float) -> str:
        if now < self.available_at:
            raise Unavailable("restarting with new settings")
        if self.model is None:
            raise Unavailable(f"failed to start: {self.startup_error}")
        self.advance(now)
        return render(
            self.spec.engine, self.model, self.spec.model, self.settings, self.spec.version
        )

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            "name": self.spec.name,
            "engine": self.spec.engine,
            "model": self.spec.model,
            "gpu": self.spec.gpu,
            "gpu_count": self.spec.gpu_count,
            "settings": self.settings,
            "workload": vars(self.spec.workload),
            "restarts": self.restarts,
            "expected_bottlenecks": list(self.spec.expected_bottlenecks),
            "state": None
            if model is None
            else {
                "kv_capacity_tokens": model.kv_capacity_tokens,
                "kv_usage": round(model.kv_usage(), 4),
                "running": len(model.running),
                "waiting": len(model.waiting),
                "preemptions": model.counters.preemptions,
                "finished": model.counters.finished,
                "finished_within_slo": model.counters.finished_within_slo,
                "clock": model.now,
            },
            "startup_error": self.startup_error,
        }


class Fleet:
    """Servers on one clock. Thread-safe: the HTTP server and tests call it concurrently."""

    def __init__(
        self,
        specs: list[ServerSpec],
        *,
        virtual: bool = False,
        speed: float = 1.0,
        tick: float = 0.25,
        seed: int = 7,
        start: float | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(names) != len(set(names)):
            raise SettingsError("server names in a fleet must be unique")
        self.virtual = virtual
        self.speed = speed
        self._wall_origin = time.time()
        self._origin = start if start is not None else self._wall_origin
        self._virtual_now = self._origin
        self._lock = threading.RLock()
        self.servers = {
            spec.name: SimulatedServer(
                spec, self._origin, tick, seed + zlib.crc32(spec.name.encode())
            )
            for spec in specs
        }

    def now(self) -> float:
        if self.virtual:
            return self._virtual_now
        return self._origin + (time.time() - self._wall_origin) * self.speed

    def advance(self, seconds: float) -> None:
        """Virtual clock only: move time forward and step every server to it."""
        if not self.virtual:
            raise RuntimeError("advance() is for a fleet on a virtual clock")
        with self._lock:
            self._virtual_now += seconds
            for server in self.servers.values():
                server.advance(self._virtual_now)

    def switch_to_real_time(self) -> None:
        """Continue from the virtual clock's time at wall-clock pace (after a warm-up)."""
        with self._lock:
            self._origin = self._virtual_now
            self._wall_origin = time.time()
            self.virtual = False

    def server(self, name: str) -> SimulatedServer:
        try:
            return self.servers[name]
        except KeyError:
            raise UnknownServerError(name) from None

    def exposition(self, name: str) -> str:
        with self._lock:
            return self.server(name).exposition(self.now())

    def apply_settings(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            server = self.server(name)
            server.restart(settings, self.now())
            return server.describe()

    def set_workload(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            server = self.server(name)
            current = vars(server.spec.workload) | changes
            unknown = set(changes) - set(vars(Workload()))
            if unknown:
                raise SettingsError(f"unknown workload field(s): {', '.join(sorted(unknown))}")
            try:
                workload = Workload(
                    **{k: type(getattr(Workload(), k))(v) for k, v in current.items()}
                )
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"bad workload value: {exc}") from None
            if workload.rate_rps < 0 or not 0 <= workload.shared_prefix_ratio < 1:
                raise SettingsError("rate_rps must be ≥ 0 and shared_prefix_ratio in [0, 1)")
            server.advance(self.now())
            server.set_workload(workload)
            return server.describe()
