"""docs/reliability.md cannot drift: every test its table names is collected by pytest, every
test of tests/reliability/ is named there, every case of the issue has a row, and every row
says that no data was lost."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
HERE = Path(__file__).resolve().parent

# Tests another suite is still building: named in the doc on purpose, checked once they exist.
PENDING = {
    "tests/deploy/test_native_topology.py": "the deployment engineer's native daemon test",
}
# Each case of the issue ("Reliability and security", deliverable 1) and a phrase of its row.
REQUIRED_CASES = [
    "HTML with HTTP 200",
    "truncated body",
    "endless body",
    "100 MB body",
    "not UTF-8",
    "duplicate series",
    "NaN and ±Inf",
    "counters that go backwards",
    "timestamps in the future",
    "stalls mid-body",
    "DNS failure",
    "PostgreSQL stopped during a run",
    "SQLite file locked by another writer",
    "read-only SQLite file",
    "orchestrator flapping",
    "slow orchestrator",
    "two `optimization_cycle` runs at once",
    "a targets file of 10,000 entries",
    "10,000 targets",
    "daemon killed mid-run",
]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+)(?:\[([^\]`]+)\])?)?`")


def _rows() -> list[list[str]]:
    """The cells of every table row whose header is 'fault / bad input'."""
    rows, in_table = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if cells[0] == "fault / bad input":
            in_table = True
        elif in_table and not set(cells[0]) <= {"-", "|"}:
            rows.append(cells)
    return rows


def _references() -> list[tuple[str, str | None, str | None]]:
    """(path, test name or None, parametrized case or None) of every test the table names."""
    return [
        (path, name or None, case or None)
        for row in _rows()
        for path, name, case in REFERENCE.findall(row[-1])
    ]


@cache
def _collected(files: tuple[str, ...]) -> tuple[set[str], str]:
    """Test ids pytest collects from `files` (its own collection, in a child process)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    ids = {line.strip() for line in done.stdout.splitlines() if "::" in line}
    return ids, done.stdout[-3000:] + done.stderr[-3000:]


def _matches(reference: tuple[str, str | None, str | None], ids: set[str]) -> bool:
    path, name, case = reference
    if not name:
        return any(i.startswith(f"{path}::") for i in ids)
    for test_id in ids:
        head, _, params = test_id.partition("[")
        if head != f"{path}::{name}":
            continue
        if case is None:
            return True
        params = params.removesuffix("]")
        if (
            params == case
            or params.startswith(f"{case}-")
            or params.endswith(f"-{case}")
            or f"-{case}-" in params
        ):
            return True
    return False


def test_the_table_has_rows_and_every_row_says_nothing_was_lost() -> None:
    rows = _rows()
    assert len(rows) >= 30
    for row in rows:
        assert len(row) == 4, row
        assert row[2] == "none", f"data lost must be 'none': {row[0]!r} says {row[2]!r}"
        assert REFERENCE.search(row[3]), f"no test named for {row[0]!r}"


def test_every_case_of_the_issue_has_a_row() -> None:
    faults = [row[0].lower() for row in _rows()]
    missing = [case for case in REQUIRED_CASES if not any(case.lower() in f for f in faults)]
    assert not missing, f"cases without a row in {DOC.name}: {missing}"


def test_every_test_named_in_the_table_exists() -> None:
    references = _references()
    files = sorted({path for path, _, _ in references})
    absent = [f for f in files if not (ROOT / f).exists()]
    unexplained = [f for f in absent if f not in PENDING]
    assert not unexplained, f"{DOC.name} names files that do not exist: {unexplained}"
    present = tuple(f for f in files if f not in absent)
    ids, output = _collected(present)
    assert ids, output
    unknown = [
        "::".join(filter(None, (path, name))) + (f"[{case}]" if case else "")
        for path, name, case in references
        if path in present and not _matches((path, name, case), ids)
    ]
    assert not unknown, f"{DOC.name} names tests pytest does not collect: {unknown}\n{output}"
    if absent:
        pytest.skip(f"pending, checked once they exist: {', '.join(absent)}")


def test_every_reliability_test_is_in_the_table() -> None:
    named = {(path, name) for path, name, _ in _references() if name}
    missing = []
    for module in sorted(HERE.glob("test_*.py")):
        if module.name == Path(__file__).name:
            continue
        relative = module.relative_to(ROOT).as_posix()
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in tree.body:
            is_test = isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            if is_test and (relative, node.name) not in named:
                missing.append(f"{relative}::{node.name}")
    assert not missing, f"tests without a row in {DOC.name}: {missing}"
