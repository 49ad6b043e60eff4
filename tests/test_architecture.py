"""The design card's import rule, checked on the source: render -> config <- vectorstore.

render and vectorstore never import each other, and config imports neither, so whatever both sides need
must live in config/. Only the cli package may see all three.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "config": {"render", "vectorstore", "cli"},
    "render": {"vectorstore", "cli"},
    "vectorstore": {"render"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    sources = sorted((REPO / package).rglob("*.py"))
    assert sources, f"{package}/ has no modules"
    violations = [
        f"{source.relative_to(REPO)} imports {name}"
        for source in sources
        for name in sorted(_imported_packages(source) & FORBIDDEN[package])
        if not (package == "vectorstore" and name == "cli" and _only_type_checking(source))
    ]
    assert not violations, violations


def _only_type_checking(path: Path) -> bool:
    """vectorstore may name cli's option types for annotations, never import cli at runtime."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                child.__dict__["_guarded"] = True
    for node in ast.walk(tree):
        is_cli = (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cli") or (
            isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "cli" for alias in node.names)
        )
        if is_cli and not node.__dict__.get("_guarded"):
            return False
    return True


def test_pre_commit_hooks_call_installed_commands() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    local = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    for hook in [*hooks, *local]:
        assert hook["entry"].split()[0] in scripts, hook
    assert {hook["id"] for hook in hooks} >= {"vectorstore-validate"}
    assert {hook["id"] for hook in local} == {hook["id"] for hook in hooks}
