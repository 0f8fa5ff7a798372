"""Run every benchmark in bench/ and rewrite the generated tables of docs/benchmarks.md and
README.md. This is what `make bench` / `./scripts/bench.sh` runs.

Each benchmark runs in its own process (so imports, caches and memory of one do not colour the
next), one after the other (a 2-core machine: two at once would measure each other). A failed
benchmark is reported and leaves its previous results in place; the others still run, and the
exit status is 1.

Results are kept as JSON in bench/results/ (one file per benchmark, with the date and machine it
was measured on), so `--only` re-runs part of the suite and the summary still shows all of it.

Usage: python bench/run_all.py [--quick] [--only parser,collector,...] [--no-write | --write]
       [--docs PATH] [--readme PATH] [--results DIR]
`--quick` runs small sizes to check that everything works; it writes nothing unless `--write`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from benchkit import ROOT

# In the order they run; the seconds are generous caps for a full run on 2 cores.
BENCHMARKS: dict[str, int] = {
    "parser": 300,
    "collector": 600,
    "vs_prometheus": 1200,
    "analysis": 1200,
    "storage": 600,
    "simulator": 600,
    "dagster": 1200,
    "sidecar": 900,
}
PACKAGES = (
    "dagster",
    "httpx",
    "pandas",
    "numpy",
    "sqlalchemy",
    "prometheus-client",
    "fastapi",
    "uvicorn",
)


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_release = Path("/etc/os-release").read_text()
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', os_release, re.MULTILINE)
    return {
        "cpu": f"{platform.machine()} {cpu}, {os.cpu_count()} cores",
        "memory": f"{memory_kib / 2**20:.0f} GiB",
        "os": pretty.group(1) if pretty else platform.platform(),
        "python": platform.python_version(),
    }


def run_one(name: str, quick: bool, timeout_s: int) -> dict | None:
    """Run bench_<name>.py; its JSON result with when and where it ran, or None if it failed."""
    script = ROOT / "bench" / f"bench_{name}.py"
    with tempfile.NamedTemporaryFile(suffix=".json") as result_file:
        command = [sys.executable, str(script), *(["--quick"] if quick else [])]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command,
                env={**os.environ, "BENCH_RESULT": result_file.name},
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(f"=== {name}: FAILED, no result after {timeout_s} s", flush=True)
            return None
        elapsed = time.monotonic() - started
        text = Path(result_file.name).read_text()
        if completed.returncode != 0 or not text:
            print(f"=== {name}: FAILED (exit {completed.returncode})", flush=True)
            return None
    result = json.loads(text)
    result["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result["machine"] = machine()
    result["quick"] = quick
    result["run_s"] = round(elapsed, 1)
    print(f"=== {name}: done in {elapsed:.0f} s", flush=True)
    return result


def _verdict(row: dict) -> str:
    if row["met"] is None:
        return "—"
    if row["met"]:
        return "met"
    return "**missed**" + (f": {row['why']}" if row.get("why") else "")


def summary_block(results: dict[str, dict]) -> str:
    lines = [
        "| what | ours | peer / baseline (same run) | ratio | goal | verdict | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results.values():
        for row in result["summary"]:
            lines.append(
                f"| {row['what']} | {row['ours']} | {row['peer']} | {row['ratio']} "
                f"| {row['goal']} | {_verdict(row)} | {result['measured_at'][:10]} |"
            )
    return "\n".join(lines)


def machine_block(results: dict[str, dict]) -> str:
    machines = {json.dumps(r["machine"], sort_keys=True) for r in results.values()}
    described = "; ".join(
        "{cpu}, {memory}, {os}, CPython {python}".format(**json.loads(m)) for m in sorted(machines)
    )
    dates = sorted({r["measured_at"] for r in results.values()})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} – {dates[-1]}"
    versions: dict[str, str] = {package: version(package) for package in PACKAGES}
    for result in results.values():
        versions.update(result.get("versions", {}))
    listed = ", ".join(f"{name} {value}" for name, value in sorted(versions.items()))
    return (
        f"Measured {when} on {described}.\n\n"
        f"Versions: {listed}.\n\n"
        "Regenerate everything with `make bench` (or `./scripts/bench.sh`); one benchmark with "
        "`./scripts/bench.sh --only NAME`."
    )


def benchmark_block(result: dict) -> str:
    return (
        f"`{result['command']}` — {result['measured_at']}, {result['run_s']:.0f} s\n\n"
        + result["table"]
    )


def replace_block(document: str, name: str, content: str, path: Path) -> str:
    """Replace what lies between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`."""
    pattern = re.compile(
        rf"(<!-- bench:{re.escape(name)} -->\n).*?(\n<!-- /bench:{re.escape(name)} -->)",
        re.DOTALL,
    )
    if not pattern.search(document):
        raise SystemExit(f"{path} has no block <!-- bench:{name} --> … <!-- /bench:{name} -->")
    return pattern.sub(lambda match: match.group(1) + content + match.group(2), document)


def write_documents(results: dict[str, dict], docs: Path, readme: Path) -> None:
    document = docs.read_text()
    document = replace_block(document, "machine", machine_block(results), docs)
    document = replace_block(document, "summary", summary_block(results), docs)
    for name, result in results.items():
        document = replace_block(document, name, benchmark_block(result), docs)
    docs.write_text(document)
    readme.write_text(replace_block(readme.read_text(), "summary", summary_block(results), readme))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: does it all work?")
    parser.add_argument("--only", help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    arguments = parser.parse_args()
    chosen = arguments.only.split(",") if arguments.only else list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; known: {', '.join(BENCHMARKS)}")
    write = arguments.write if arguments.write is not None else not arguments.quick

    failed = []
    for name in chosen:
        result = run_one(name, arguments.quick, BENCHMARKS[name])
        if result is None:
            failed.append(name)
        elif write:
            arguments.results.mkdir(parents=True, exist_ok=True)
            (arguments.results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if write:
        stored = {
            name: json.loads(path.read_text())
            for name in BENCHMARKS
            if (path := arguments.results / f"{name}.json").exists()
        }
        write_documents(stored, arguments.docs, arguments.readme)
        print(f"\nwrote {arguments.docs} and {arguments.readme} from {len(stored)} results")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
