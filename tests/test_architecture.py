"""The design card's import rules, checked on the source.

render -> config <- vectorstore: render and vectorstore never import each other, and config imports neither,
so whatever both sides need must live in config/. Only the cli package may see all three, and nothing imports
cli. No module of ours imports itself back through others, and the storage core never imports the HTTP edge.
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
    "vectorstore": {"render", "cli"},
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
    ]
    assert not violations, violations


PACKAGES = ("cli", "config", "render", "vectorstore")
# The storage core and search speak SQL, never HTTP: nothing under them imports the API edge.
LAYERS = {
    "vectorstore.storage": ("vectorstore.api", "vectorstore.app", "vectorstore.commands"),
    "vectorstore.search": ("vectorstore.api", "vectorstore.app", "vectorstore.commands"),
    "vectorstore.embeddings": ("vectorstore.api", "vectorstore.app", "vectorstore.commands"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each one imports, at any depth in the file (lazy imports too)."""
    modules = {_module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from a.b import c` imports module a.b.c when it is one, else a name from a.b.
                targets |= {
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                }
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def test_no_import_cycles() -> None:
    """No module of ours reaches itself through imports (Tarjan's strongly connected components)."""
    graph = _module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers(layer: str) -> None:
    graph = _module_graph()
    violations = [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        if module == layer or module.startswith(layer + ".")
        for target in sorted(targets)
        if any(target == banned or target.startswith(banned + ".") for banned in LAYERS[layer])
    ]
    assert not violations, violations


def test_pre_commit_hooks_call_installed_commands() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    local = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    for hook in [*hooks, *local]:
        assert hook["entry"].split()[0] in scripts, hook
    assert {hook["id"] for hook in hooks} >= {"vectorstore-validate"}
    assert {hook["id"] for hook in local} == {hook["id"] for hook in hooks}
