"""The package's shape: imports go one way down a fixed order of layers (no circles, no climbs back up, in-function
imports included), and no module grows past the size a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module may import from its own layer's packages or any layer below, never above.
LAYERS = [
    {"errors", "imports", "stats", "paths", "algorithms", "noise"},  # neutral helpers and the algorithm registry
    {"config"},  # the recipe: schema, rules, resolution
    {"schedule", "rl_math", "sampling", "decode", "fused_projections", "runlog", "s3", "artifacts", "tracking",
     "transcripts", "progress", "tensorboard_log"},  # every trainer shares
    {"data"},
    {"models"},
    {"rewards"},
    {"workflows"},
    {"evaluation", "inference"},  # inference: FAI-RL inference/eval recipes, fai-rl-serve
    {"backends"},  # the trainers, reached through the registry
    {"export"},
    {"cli"},  # the command line: resolve, plan the launch, open the run dir, hand the run to the backend
]
LARGEST_MODULE = 400  # lines


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "fai_rl").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fai_rl"):
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            found |= {node.module} if node.module in modules else set()
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if not top:
        return len(LAYERS)  # the package itself re-exports
    (index,) = [i for i, layer in enumerate(LAYERS) if top in layer]
    return index


def test_every_package_has_a_layer():
    tops = {m.split(".")[1] for m in _modules() if "." in m}
    assert sorted(tops - set().union(*LAYERS)) == []


def test_imports_never_climb_to_a_higher_layer():
    climbs = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)]
    assert climbs == []


def test_no_import_circles():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing its own submodules is how packages re-export; a submodule importing its
    # package's __init__ back is the circle we forbid
    assert cycles == []


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > LARGEST_MODULE}
    assert long == {}
