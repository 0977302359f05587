"""The import contract: inside ``feedline.service`` imports run one way, down the wings, and no module circle exists.

Every import counts, function-local ones too (they are how a circle hides). The wings, top to bottom:
server -> collate -> media -> engine -> tokenizers -> _options. ``feedline.client`` never imports the service,
and ``feedline.proto`` imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"feedline.proto": ROOT / "proto", "feedline.service": ROOT / "service", "feedline.client": ROOT / "client"}
WINGS = ["_options", "tokenizers", "engine", "media", "collate", "server"]  # bottom to top
TOP = {"__init__", "_cli", "_cli_offline", "_quiet"}  # service-level modules above every wing


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Feedline modules that ``name`` imports, resolved to module names (a package's ``__init__`` included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            candidates = bases
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in MODULES and candidate != name:
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _rank(module: str) -> int:
    rest = module.removeprefix("feedline.service").lstrip(".").split(".")[0] or "__init__"
    if rest in TOP:
        return len(WINGS)
    return WINGS.index(rest)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("feedline.service.")))
def test_service_imports_run_down_the_wings(module: str) -> None:
    upward = [t for t in GRAPH[module] if t.startswith("feedline.service.") and _rank(t) > _rank(module)]
    assert not upward, f"{module} imports {upward}: a wing may only import the wings below it ({WINGS[::-1]})"


def test_client_and_proto_stay_light() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("feedline.client"):
            assert not [t for t in targets if t.startswith("feedline.service")], module
        if module.startswith("feedline.proto"):
            assert not [t for t in targets if not t.startswith("feedline.proto")], module


def _cycle() -> list[str] | None:
    """One import circle between feedline modules (package ``__init__`` re-exports excluded), or None."""
    edges = {
        m: {t for t in ts if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
        for m, ts in GRAPH.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_circle() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_contract_sees_a_violation() -> None:
    """The checker itself: an engine module importing the server is reported."""
    assert _rank("feedline.service.server._grpc") > _rank("feedline.service.engine._text")
    assert "feedline.service.tokenizers._processor" in GRAPH["feedline.service.engine._text"]
