"""Import-graph check for the layer rule: parse every module with ``ast``, follow every import (function-local
ones too, and literal names given to ``importlib.import_module``), and report cycles, imports against the layer
order, ``_private`` names imported from another module, and ``__import__`` / non-literal ``import_module`` calls.

Usage: ``python tools/layers.py [ROOT]`` (exit 1 and one line per problem when the rule is broken).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Bottom to top. A module may import modules of a strictly lower layer, or modules of its own group (a group is
# one entry of a layer: a base module or a subpackage). Groups of the same layer never import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("engines",),  # see pipeline/__init__.py for the picture
    ("pipeline", "pipeline.frames", "pipeline.queues", "pipeline.redact", "pipeline.config", "pipeline.configfile",
     "pipeline.metrics", "pipeline.progress", "pipeline.overlay", "pipeline.sample", "pipeline.checkpoints",
     "pipeline.zones"),
    ("pipeline.sources", "pipeline.stages", "pipeline.sinks"),
    ("pipeline.runtime",),
    ("pipeline.fleet",),  # below the applications: the view's camera API uses the registry
    ("pipeline.jobs", "pipeline.benchmark", "pipeline.view"),
    ("pipeline.cli",),
)
BASE_LAYER = 1  # the base layer's modules may import each other (cycles are still errors)
PACKAGES = ("pipeline", "engines")


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    names: tuple[str, ...] = ()


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    dynamic: list[tuple[str, int, str]] = field(default_factory=list)  # (module, line, what)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def build_graph(root: Path, packages: Sequence[str] = PACKAGES) -> Graph:
    g = Graph()
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            g.modules[module_name(root, path)] = path
    for mod, path in g.modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        loops: dict[str, list[str]] = {}  # `for name in ("a", "b")`: what a computed import name can be
        for node in ast.walk(tree):
            if (isinstance(node, ast.For) and isinstance(node.target, ast.Name)
                    and isinstance(node.iter, ast.Tuple | ast.List)):
                loops[node.target.id] = [e.value for e in node.iter.elts
                                         if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    g.edges.append(Edge(mod, a.name, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = node.module if not node.level else _resolve_relative(mod, is_pkg, node.level, node.module)
                assert target is not None
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in g.modules:  # `from pkg import submodule`
                        g.edges.append(Edge(mod, sub, node.lineno))
                    else:
                        g.edges.append(Edge(mod, target, node.lineno, (a.name,)))
            elif isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if name not in ("__import__", "import_module"):
                    continue
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    g.edges.append(Edge(mod, arg.value, node.lineno))
                    if name == "import_module":
                        continue
                elif isinstance(arg, ast.Name):  # still followed, so the cycles it hides are found
                    g.edges.extend(Edge(mod, v, node.lineno) for v in loops.get(arg.id, ()))
                g.dynamic.append((mod, node.lineno, f"{name}() of a computed name" if name == "import_module"
                                  else "__import__()"))
    return g


def _own(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest known module that ``name`` refers to (``pipeline.sinks.RedisSink`` -> ``pipeline.sinks``)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def group_of(mod: str, layers: Sequence[Sequence[str]] = LAYERS) -> tuple[int, str] | None:
    """The (layer, group) of ``mod``. A group holds its submodules unless it is the parent of other groups
    (``pipeline`` is only the package's ``__init__``; a new ``pipeline.x`` must be placed in the map)."""
    every = [grp for groups in layers for grp in groups]
    best: tuple[int, str] | None = None
    for rank, groups in enumerate(layers):
        for grp in groups:
            parent = any(o.startswith(grp + ".") for o in every)
            if (mod == grp or (not parent and mod.startswith(grp + "."))) and (best is None or len(grp) > len(best[1])):
                best = (rank, grp)
    return best


def find_cycles(nodes: Iterable[str], adj: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), via Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in adj.get(v, ()):
                out.append(sorted(comp))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return out


def check(root: Path, packages: Sequence[str] = PACKAGES,
          layers: Sequence[Sequence[str]] = LAYERS, base_layer: int = BASE_LAYER) -> list[str]:
    """Every problem as one line; empty when the tree keeps the layer rule."""
    g = build_graph(root, packages)
    problems: list[str] = []
    adj: dict[str, set[str]] = {m: set() for m in g.modules}
    for e in g.edges:
        dst = _own(e.dst, g.modules)
        if dst is None or dst == e.src:
            continue
        adj[e.src].add(dst)
        for n in e.names:
            if n.startswith("_") and not n.startswith("__"):
                problems.append(f"{e.src}:{e.line} imports the private name {n} of {dst}")
        s, d = group_of(e.src, layers), group_of(dst, layers)
        if s is None or d is None:
            problems.append(f"{e.src}:{e.line} -> {dst}: module outside the layer map ({'src' if s is None else 'dst'})")
            continue
        if s[1] == d[1] or d[0] < s[0] or (s[0] == d[0] == base_layer):
            continue
        kind = "a higher" if d[0] > s[0] else "a sibling"
        problems.append(f"{e.src}:{e.line} imports {dst}, {kind} layer ({d[1]} above or beside {s[1]})")
    for mod, line, what in g.dynamic:
        problems.append(f"{mod}:{line} uses {what}: import modules by name, listed explicitly")
    for comp in find_cycles(g.modules, adj):
        problems.append("import cycle: " + " <-> ".join(comp))
    return list(dict.fromkeys(problems))


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    problems = check(root)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
