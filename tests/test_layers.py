"""The HTTP doors do not import one another: what they share lives in ``web/`` below them
(docs/architecture.md, "The layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deepexec_server

SERVER = Path(deepexec_server.__file__).parent
DOORS = ("api", "mcp", "ui", "compat")


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages of ``deepexec_server`` that a module imports."""
    package = path.relative_to(SERVER).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - node.level + 1]
            target = [*base, *(node.module or "").split(".")]
        elif (node.module or "").startswith("deepexec_server."):
            target = node.module.split(".")[1:]  # type: ignore[union-attr]
        else:
            continue
        if target and target[0]:
            found.add(target[0])
    return found


@pytest.mark.parametrize("door", DOORS)
def test_a_door_imports_no_other_door(door: str) -> None:
    for path in sorted((SERVER / door).rglob("*.py")):
        others = _imported_packages(path) & (set(DOORS) - {door})
        assert not others, f"{path.relative_to(SERVER)} imports {sorted(others)}"


def test_web_imports_no_door() -> None:
    for path in sorted((SERVER / "web").rglob("*.py")):
        assert not _imported_packages(path) & set(DOORS), path
