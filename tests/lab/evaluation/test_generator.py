"""Fleets generated from a seed: the spread the evaluation promises, and ground truth that is
what the simulator shows."""

from __future__ import annotations

from collections import Counter

from perf_lab.evaluation.harness import QUICK
from perf_lab.simulator.generator import (
    ENGINES,
    UNKNOWN_GPU,
    WindowPlan,
    ground_truth,
    observe,
    physical_gpu,
    plan_fleet,
    realize,
)
from perf_lab.simulator.scenarios import targets_for
from perf_pipelines.hardware import GPUS
from perf_pipelines.targets import parse_targets


def test_forty_servers_cover_engines_versions_gpus_and_workloads() -> None:
    slots = plan_fleet(123, 40)
    assert Counter(s.engine for s in slots) == dict.fromkeys(ENGINES, 10)
    gpus = {s.gpu for s in slots}
    for gpu in ("T4", "A10", "A100-80GB", "L4", "L40S", "H100-SXM-80GB", "H200", "MI300X"):
        assert gpu in gpus
    assert UNKNOWN_GPU in gpus and UNKNOWN_GPU not in GPUS
    assert all(len({s.version for s in slots if s.engine == e}) >= 2 for e in ENGINES)
    archetypes = {s.archetype for s in slots}
    assert {"healthy", "burst", "diurnal", "queue", "kv", "itl", "ttft", "idle"} <= archetypes


def test_the_same_seed_gives_the_same_fleet_and_another_seed_another() -> None:
    assert plan_fleet(7, 12) == plan_fleet(7, 12)
    assert plan_fleet(7, 12) != plan_fleet(8, 12)


def test_ground_truth_is_what_the_simulator_shows_in_the_first_window() -> None:
    window = QUICK.window_plan()
    for slot in plan_fleet(31, 8):
        server = realize(slot, window)
        assert ground_truth(observe(server.spec, window), server.spec) == server.expected
        if server.archetype in ("healthy", "burst"):
            assert server.expected == set()
        if server.archetype == "queue":
            assert "queue_saturation" in server.expected


def test_the_unknown_gpu_is_simulated_on_a_real_profile_but_named_as_nobody_knows_it() -> None:
    slot = next(s for s in plan_fleet(123, 40) if s.gpu == UNKNOWN_GPU)
    server = realize(slot, WindowPlan(warmup_s=60, window_s=60))
    assert server.spec.gpu == physical_gpu(UNKNOWN_GPU) in GPUS
    (target,) = parse_targets(
        targets_for([server.spec], "http://127.0.0.1:1", {server.spec.name: UNKNOWN_GPU})
    )
    assert target.hardware is not None and target.hardware.gpu == UNKNOWN_GPU
