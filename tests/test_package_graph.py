"""The package's import graph stays a DAG, with HTTP only at the edge.

Every `import` in fleetlm counts, also those inside functions (a lazy import is still a
dependency). Nodes are fleetlm's subpackages and top-level modules (`api`, `engine`, ...,
`config`, `catalog`, `cli`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import fleetlm

ROOT = Path(fleetlm.__file__).parent


def node_of(module: str) -> str | None:
    """`fleetlm.api.app` -> "api"; `fleetlm.config` -> "config"; fleetlm itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "fleetlm" and len(parts) > 1 else None


def imports() -> dict[str, set[str]]:
    """Each fleetlm module (dotted) -> the absolute module names it imports."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this package
                    base = module.split(".")[: len(module.split(".")) - node.level + (rel.name == "__init__")]
                    names.add(".".join(base + ([node.module] if node.module else [])))
                else:
                    names.add(node.module)
                    names.update(f"{node.module}.{a.name}" for a in node.names)
        out[module] = names
    return out


def package_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for module, names in imports().items():
        src = node_of(module)
        for name in names:
            dst = node_of(name)  # `from fleetlm import LLM` names no subpackage: not an edge
            if src and dst and dst != src and ((ROOT / dst).is_dir() or (ROOT / f"{dst}.py").is_file()):
                graph[src].add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_cycle_between_subpackages():
    graph = package_graph()
    assert {"api", "backends", "engine", "openai", "catalog"} <= set(graph) | {d for ds in graph.values() for d in ds}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_layers_below_import_nothing_above():
    graph = package_graph()
    assert not graph.get("openai"), graph.get("openai")  # the wire shapes every layer may import
    assert not graph.get("config"), graph.get("config")
    assert graph.get("engine", set()) <= {"config", "models"}
    assert not graph.get("models", set()) - {"config"}
    for low in ("engine", "models", "openai", "backends", "compound", "catalog"):
        assert "api" not in graph.get(low, set()), low


def test_only_the_api_package_speaks_http():
    for module, names in imports().items():
        web = sorted(n for n in names if n.split(".")[0] in ("fastapi", "starlette", "uvicorn"))
        if web and not module.startswith("fleetlm.api"):
            assert module in ("fleetlm.cli",) and web == ["uvicorn"], (module, web)


def test_fleet_help_does_not_import_torch():
    code = ("import sys\nfrom fleetlm.cli import build_parser\n"
            "for cmd in ([], ['serve'], ['router'], ['tune'], ['hardware'], ['plan'], ['eval']):\n"
            "    try:\n        build_parser().parse_args(cmd + ['--help'])\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
