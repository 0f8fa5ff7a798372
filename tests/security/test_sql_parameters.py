"""SQL only through SQLAlchemy Core or bound parameters: no string is ever built into a query.

A static check over perf_pipelines/ (the AST, not a grep, so comments and docstrings do not
count and nothing hides behind a line break):

1. No f-string, `%` or `.format()` whose text starts like SQL, anywhere.
2. Every raw-SQL sink — `text()`, `DDL()`, `literal_column()`, `exec_driver_sql()`,
   `executescript()`, `cursor.execute()`, `op.execute()` — gets a string literal, or a module
   constant named in ALLOWED_CONSTANTS below with the reason it is safe. Values travel as bound
   parameters (`text("... :key"), {"key": value}`).

Everything else goes through Core constructs (select/insert/update), which bind every value.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "perf_pipelines"
# Statement openings, specific enough that log messages ("Set ORCHESTRATOR_TOKEN", "update
# the targets file") do not match.
SQL_START = re.compile(
    r"^\s*(select\b.*\bfrom\b|select\s+\d|insert\s+into\b|update\s+\S+\s+set\b"
    r"|delete\s+from\b|create\s+(or\s+replace\s+)?(temp\w*\s+)?(table|view|index|unique|database"
    r"|schema|extension)\b|drop\s+(table|view|index|database|schema)\b|alter\s+(table|database)\b"
    r"|pragma\s|truncate\s|grant\s|with\s+\w+\s+as\s*\()",
    re.IGNORECASE | re.DOTALL,
)
SINK_FUNCTIONS = {"text", "DDL", "literal_column"}
SINK_METHODS = {"exec_driver_sql", "executescript"}
SINK_EXECUTE_RECEIVERS = {"cursor", "op", "dbapi_connection", "raw"}

# Module constants that are passed to a raw-SQL sink, with the reason each is safe.
ALLOWED_CONSTANTS: dict[tuple[str, str], str] = {
    (
        "perf_pipelines/storage/migrations/versions/0001_initial_schema.py",
        "OPEN_RECOMMENDATIONS_VIEW",
    ): "frozen CREATE VIEW DDL of migration 0001: a literal with no input in it",
}


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    sink: str
    argument: str


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    constants: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            constants[node.target.id] = node.value
    return constants


def _imports_sqlalchemy_text(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("sqlalchemy")
        and any(alias.name == "text" for alias in node.names)
        for node in ast.walk(tree)
    )


def _sink_name(call: ast.Call, bare_text_is_sql: bool) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        if func.id == "text":
            return "text" if bare_text_is_sql else None
        return func.id if func.id in SINK_FUNCTIONS - {"text"} else None
    if isinstance(func, ast.Attribute):
        receiver = func.value.id if isinstance(func.value, ast.Name) else None
        if func.attr in SINK_FUNCTIONS and receiver in ("sa", "sqlalchemy"):
            return f"{receiver}.{func.attr}"
        if func.attr in SINK_METHODS:
            return func.attr
        if func.attr == "execute" and receiver in SINK_EXECUTE_RECEIVERS:
            return f"{receiver}.execute"
    return None


def _starts_like_sql(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(SQL_START.match(node.value))
    if isinstance(node, ast.JoinedStr):
        # The literal parts with each {…} as "?": f"SELECT {cols} FROM t" reads "SELECT ? FROM t".
        shape = "".join(
            str(part.value) if isinstance(part, ast.Constant) else "?" for part in node.values
        )
        return bool(SQL_START.match(shape))
    return False


def scan() -> tuple[list[Use], list[str]]:
    uses: list[Use] = []
    problems: list[str] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        path = str(file.relative_to(PACKAGE.parent))
        tree = ast.parse(file.read_text(), filename=path)
        constants = _module_constants(tree)
        bare_text_is_sql = _imports_sqlalchemy_text(tree)
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            # 1. SQL assembled from pieces, wherever it is
            if isinstance(node, ast.JoinedStr) and _starts_like_sql(node):
                problems.append(f"{where}: SQL in an f-string")
            elif (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mod | ast.Add)
                and _starts_like_sql(node.left)
            ):
                problems.append(f"{where}: SQL built with % or +")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "format"
                and _starts_like_sql(node.func.value)
            ):
                problems.append(f"{where}: SQL built with .format()")
            # 2. what reaches a raw-SQL sink
            if not isinstance(node, ast.Call):
                continue
            sink = _sink_name(node, bare_text_is_sql)
            if sink is None or not node.args:
                continue
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                uses.append(Use(path, node.lineno, sink, argument.value.strip()[:60]))
            elif isinstance(argument, ast.Name) and (path, argument.id) in ALLOWED_CONSTANTS:
                value = constants.get(argument.id)
                if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    problems.append(f"{where}: {argument.id} is not a string literal")
                uses.append(Use(path, node.lineno, sink, argument.id))
            else:
                problems.append(f"{where}: {sink}() gets {ast.unparse(argument)[:60]!r}")
    return uses, problems


def test_no_sql_is_built_from_strings() -> None:
    uses, problems = scan()
    assert not problems, "\n".join(problems)
    # The check must be looking at something: the PRAGMAs, advisory locks, health probes,
    # the migration's DDL.
    assert len(uses) >= 6, uses
    sinks = {use.sink for use in uses}
    assert {"text", "cursor.execute", "op.execute"} <= sinks, sinks


def test_every_allowed_constant_is_still_used() -> None:
    uses, _ = scan()
    used = {(use.path, use.argument) for use in uses}
    assert set(ALLOWED_CONSTANTS) <= used


def test_the_checker_catches_what_it_should(tmp_path: Path) -> None:
    bad = [
        'connection.execute(text(f"SELECT * FROM t WHERE id = {rec_id}"))',
        'connection.execute(text(f"SELECT {columns} FROM t"))',
        "connection.execute(text(\"DELETE FROM t WHERE id = '%s'\" % rec_id))",
        'query = "select * from t where name = {}".format(name)',
        "cursor.execute(query)",
        'connection.exec_driver_sql("UPDATE t SET a = " + value)',
    ]
    for source in bad:
        tree = ast.parse("from sqlalchemy import text\n" + source)
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr | ast.BinOp) and _starts_like_sql(
                node if isinstance(node, ast.JoinedStr) else node.left  # type: ignore[union-attr]
            ):
                found.append(node)
            elif isinstance(node, ast.Call):
                if (
                    isinstance(node.func, ast.Attribute)
                    and node.func.attr == "format"
                    and _starts_like_sql(node.func.value)
                ):
                    found.append(node)
                sink = _sink_name(node, True)
                if sink and node.args and not isinstance(node.args[0], ast.Constant):
                    found.append(node)
        assert found, source
