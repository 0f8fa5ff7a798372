"""docs/architecture.md cannot drift from the code: its picture of the layers is the
import-linter contract of pyproject.toml, layer by layer and in order; every module of the
package sits in a layer; every contract is named; and every path and name the behaviour table
and the data-flow tables point to exists."""

from __future__ import annotations

import ast
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = "perf_pipelines"
LAYERS_MARKER = "<!-- layers:"
# Named in the doc before they land (another engineer is adding them); checked once they exist.
PENDING = {
    "perf_pipelines/engines/truth_table.yaml": "the engine truth table",
}
# Paths that are examples in the how-to sections, not files.
PLACEHOLDERS = ("newengine", "<")
_PATH = re.compile(r"`((?:perf_pipelines|lab|tests|docs|scripts|bench)/[^`\s]*)`")
_TICKED = re.compile(r"`([^`]+)`")
_IDENTIFIER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)(?:\(\))?$")


@cache
def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


@cache
def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.")


def _contract_layers() -> list[str]:
    """The layers contract's layers, top first, without the package prefix and with single
    spaces around the separators (":" independent siblings, "|" siblings that may import)."""
    (contract,) = [c for c in _contracts() if c["type"] == "layers"]
    layers = contract["layers"]
    assert isinstance(layers, list)
    return [" ".join(_short(part) for part in str(layer).split()) for layer in layers]


def _picture_layers() -> list[str]:
    """The text inside the boxes of the code block after the layers marker, one entry per box
    (a box's continuation lines are empty inside)."""
    text = _doc()
    assert LAYERS_MARKER in text, f"{DOC.name} lost its {LAYERS_MARKER!r} marker"
    after = text[text.index(LAYERS_MARKER) :]
    block = after.split("```", 2)[1]
    layers = []
    for line in block.splitlines():
        match = re.match(r"^\s*│(.*?)│", line)
        if match and match.group(1).strip():
            layers.append(" ".join(match.group(1).split()))
    return layers


def test_the_picture_is_the_layers_contract_in_order() -> None:
    assert _picture_layers() == _contract_layers()


def _package_modules() -> set[str]:
    package = ROOT / PACKAGE
    modules = {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    return modules


def test_every_module_of_the_package_is_in_a_layer() -> None:
    layered = {name for layer in _contract_layers() for name in re.split(r"\s*[:|]\s*", layer)}
    assert _package_modules() - layered == set(), "modules outside the layers contract"
    assert layered - _package_modules() == set(), "layers naming modules that do not exist"


@pytest.mark.parametrize("name", [str(c["name"]) for c in _contracts()])
def test_every_contract_is_named(name: str) -> None:
    assert name in " ".join(_doc().split()), f"contract {name!r} is not named in {DOC.name}"


def _named_paths() -> list[str]:
    return sorted(
        {p for p in _PATH.findall(_doc()) if not any(x in p for x in PLACEHOLDERS)} - set(PENDING)
    )


@pytest.mark.parametrize("path", _named_paths())
def test_every_named_path_exists(path: str) -> None:
    assert (ROOT / path).exists(), f"{DOC.name} names {path}, which does not exist"


@cache
def _defined(path: str) -> dict[str, set[str]]:
    """Module-level names of a Python file, each with the names defined in its body when it is
    a class (attributes, methods, properties)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names: dict[str, set[str]] = {}

    def targets(node: ast.stmt) -> list[str]:
        if isinstance(node, ast.Assign):
            return [t.id for t in node.targets if isinstance(t, ast.Name)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return [node.name]
        return []

    for node in tree.body:
        for name in targets(node):
            members = names.setdefault(name, set())
            if isinstance(node, ast.ClassDef):
                members.update(n for child in node.body for n in targets(child))
    return names


def _pointers() -> list[tuple[str, str]]:
    """(path, name) for every name after a path in the `where` column of the behaviour tables
    and the `code` column of the data-flow tables: the name must be defined in that file."""
    found = []
    column: int | None = None
    for line in _doc().splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if column is None:  # the header row
            headers = [cell.lower() for cell in cells]
            column = next((i for i, h in enumerate(headers) if h in ("where", "code")), -1)
            continue
        if column < 0 or column >= len(cells) or set(cells[0]) <= {"-", ":"}:
            continue
        current: str | None = None
        for token in _TICKED.findall(cells[column]):
            if _PATH.fullmatch(f"`{token}`"):
                current = token
                continue
            match = _IDENTIFIER.match(token)
            if match and current is not None and current.endswith(".py"):
                found.append((current, match.group(1)))
    return sorted(set(found))


def test_the_tables_point_somewhere() -> None:
    assert len(_pointers()) > 100


@pytest.mark.parametrize(("path", "name"), _pointers())
def test_every_named_function_is_where_the_doc_says(path: str, name: str) -> None:
    if path in PENDING or not (ROOT / path).exists():
        pytest.skip(f"{path} does not exist (test_every_named_path_exists says so)")
    owner, _, member = name.partition(".")
    defined = _defined(path)
    assert owner in defined, f"{DOC.name}: {name} is not defined in {path}"
    if member:
        assert member in defined[owner], f"{DOC.name}: {name} is not defined in {path}"
