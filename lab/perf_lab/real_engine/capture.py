"""Capture what a real llama-server exposes, idle and under load, as parser fixtures.

Writes into one folder per build (`tests/fixtures/expositions/llamacpp/b<build>/`):
`idle.txt` and `load.txt` (/metrics as served), `props.json`, `slots_idle.json` and
`slots_load.json`, and `capture.json` (how they were taken, and the tokens the load generated).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from perf_lab.real_engine.server import LlamaServer, ServerError

PROMPT = "The three primary colours of light are"
# Busy long enough to be caught by a poll on a loaded 2-core machine: three rounds of requests
# for the slots, so that the body under load shows every slot generating, requests deferred
# behind them and the counters of the round already done.
N_PREDICT = 48
ROUNDS = 3
LOAD_TIMEOUT_S = 120.0


def metrics_text(server: LlamaServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:  # noqa: S310  # nosec B310
        text: str = response.read().decode("utf-8")
        return text


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise ServerError(f"{name} not in /metrics")


def capture(server: LlamaServer, out: Path) -> dict[str, Any]:
    """Take the bodies from a freshly started `server` (nothing served yet) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    slots = int(server.props()["total_slots"])
    (out / "idle.txt").write_text(metrics_text(server), encoding="utf-8")
    (out / "slots_idle.json").write_text(
        json.dumps(server.get_json("/slots"), indent=1) + "\n", encoding="utf-8"
    )
    answers: list[dict[str, Any]] = []
    prompts = [f"{PROMPT} (request {i})" for i in range(ROUNDS * slots)]
    worker = threading.Thread(
        target=lambda: answers.extend(server.load(prompts, N_PREDICT, concurrency=len(prompts)))
    )
    worker.start()
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    loaded = None
    while time.monotonic() < deadline and worker.is_alive():
        text = metrics_text(server)
        if (
            _value(text, "llamacpp:requests_processing") >= slots
            and _value(text, "llamacpp:requests_deferred") >= 1
            and _value(text, "llamacpp:tokens_predicted_total") > 0
        ):
            loaded = text
            (out / "slots_load.json").write_text(
                json.dumps(server.get_json("/slots"), indent=1) + "\n", encoding="utf-8"
            )
            break
        time.sleep(0.05)
    worker.join(LOAD_TIMEOUT_S)
    if loaded is None:
        raise ServerError(
            f"never saw all {slots} slots busy, requests deferred and tokens counted "
            f"within {LOAD_TIMEOUT_S:g} s"
        )
    (out / "load.txt").write_text(loaded, encoding="utf-8")
    (out / "props.json").write_text(
        json.dumps(_props_for_fixture(server.props()), indent=1) + "\n", encoding="utf-8"
    )
    summary = {
        "command": [Path(part).name if "/" in part else part for part in server.command],
        "requests": len(prompts),
        "n_predict": N_PREDICT,
        "tokens_predicted": sum(int(answer["tokens_predicted"]) for answer in answers),
        "tokens_evaluated": sum(int(answer["tokens_evaluated"]) for answer in answers),
        "after_load": metrics_text(server),
    }
    (out / "capture.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _props_for_fixture(props: dict[str, Any]) -> dict[str, Any]:
    """/props without the machine's model path (the cache folder differs per machine)."""
    kept = dict(props)
    if "model_path" in kept:
        kept["model_path"] = Path(str(kept["model_path"])).name
    return kept
