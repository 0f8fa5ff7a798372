"""The README's benchmark command, at small sizes: every benchmark in bench/ runs against its real
peer (Prometheus, prometheus-client, a no-op Dagster job, wrk, the bare driver), reports a
summary, and bench/run_all.py rewrites the generated blocks of copies of the docs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import run_all  # noqa: E402  (bench/ is a folder of scripts, not a package)


def test_every_benchmark_script_is_run_by_run_all() -> None:
    scripts = {path.stem.removeprefix("bench_") for path in (ROOT / "bench").glob("bench_*.py")}
    assert scripts == set(run_all.BENCHMARKS)


def test_the_docs_have_a_block_for_every_benchmark() -> None:
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    for name in ["machine", "summary", *run_all.BENCHMARKS]:
        assert f"<!-- bench:{name} -->" in docs and f"<!-- /bench:{name} -->" in docs, name
    assert "<!-- bench:summary -->" in (ROOT / "README.md").read_text()


def test_a_missing_block_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no block <!-- bench:parser -->"):
        run_all.replace_block("# no markers here\n", "parser", "table", tmp_path / "x.md")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_of_every_benchmark_rewrites_the_tables(tmp_path: Path) -> None:
    docs, readme, results = tmp_path / "benchmarks.md", tmp_path / "README.md", tmp_path / "r"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    shutil.copy(ROOT / "README.md", readme)
    written_to = ["--docs", str(docs), "--readme", str(readme), "--results", str(results)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--write", *written_to],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "BENCH_RESULT"},
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    written = docs.read_text()
    summary = re.search(r"<!-- bench:summary -->\n(.*?)\n<!-- /bench:summary -->", written, re.S)
    assert summary is not None
    for name in run_all.BENCHMARKS:
        result = json.loads((results / f"{name}.json").read_text())
        assert result["quick"] is True
        assert result["summary"], f"{name} reports no summary row"
        for row in result["summary"]:
            assert f"| {row['what']} | {row['ours']} |" in summary.group(1)
        block = re.search(rf"<!-- bench:{name} -->\n(.*?)\n<!-- /bench:{name} -->", written, re.S)
        assert block is not None and result["table"] in block.group(1)
    assert summary.group(1) in readme.read_text()
    assert " -->\nnot measured yet\n<!-- /bench:" not in written  # every block was filled
