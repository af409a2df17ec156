"""The import graph of the package: no cycle, and imports run one way (cli -> pipeline -> stages -> floors).

The graph is read from the source with ``ast`` (every ``import`` and
``from ... import``, at module level or inside functions), over ``avatarsdk/``,
``rigs/`` and ``exporters/``; the last two are installed as ``avatarsdk.rigs``
and ``avatarsdk.exporters`` (pyproject's ``package-dir``) and named so here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"avatarsdk": "avatarsdk", "rigs": "avatarsdk.rigs", "exporters": "avatarsdk.exporters"}

# Layer of each module (longest matching prefix wins); a module may import its own layer and below.
LAYERS: dict[str, int] = {
    # 0 types: frozen data types, errors, file and colour helpers, the weights registry
    "avatarsdk": 0,  # the root package: __version__ and AvatarError (its create/random_avatar are lazy, below)
    "avatarsdk.errors": 0,
    "avatarsdk.datatypes": 0,
    "avatarsdk.files": 0,
    "avatarsdk.colour": 0,
    "avatarsdk.pretrained": 0,
    "avatarsdk.sizes": 0,  # the one texture-size rule
    # 1 floors: renderer, rig, networks, and what paints or samples on the rig's UVs
    "avatarsdk.render": 1,
    "avatarsdk.rigs": 1,
    "avatarsdk.nn": 1,
    "avatarsdk.uvmap": 1,
    "avatarsdk.materials": 1,
    "avatarsdk.paint": 1,
    "avatarsdk.cache": 1,  # disk cache of topology tables (keyed by the ICT files and the code)
    "avatarsdk.hair": 1,  # hairstyles grown on the rig's scalp, hair cards and their atlas
    "avatarsdk.optim": 1,  # Adam without torch._dynamo's import cost
    # 2 stages: one module per step from photo to exported files
    "avatarsdk.photo": 2,
    "avatarsdk.detect": 2,
    "avatarsdk.parse": 2,
    "avatarsdk.hands": 2,
    "avatarsdk.fit": 2,
    "avatarsdk.albedo": 2,
    "avatarsdk.losses": 2,
    "avatarsdk.invert": 2,
    "avatarsdk.refine": 2,
    "avatarsdk.scene": 2,
    "avatarsdk.preview": 2,
    "avatarsdk.avatarfile": 2,
    "avatarsdk.exporters": 2,
    "avatarsdk.viewer": 2,
    "avatarsdk.pbr": 2,  # the skin's normal, roughness and occlusion maps
    "avatarsdk.iris": 2,  # eye colour from the photo
    "avatarsdk.licensing": 2,  # which components (parser, perceptual term) a run may use
    # 3 jobs: the stages chained
    "avatarsdk.pipeline": 3,
    "avatarsdk.batch": 3,
    # 4 tools built on the jobs: benchmarks and training
    "avatarsdk.bench": 4,
    "avatarsdk.train": 4,
    # 5 the command line
    "avatarsdk.cli": 5,
    "avatarsdk.__main__": 5,
}

# Imports that run only when called and may point up: the root package's PEP 562
# ``__getattr__`` makes ``avatarsdk.create`` / ``avatarsdk.random_avatar`` work without
# importing the pipeline (torch, mediapipe) on ``import avatarsdk``.
LAZY_FACADE = {("avatarsdk", "avatarsdk.pipeline")}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _target(name: str, mods: dict[str, Path]) -> str:
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, ast.stmt, bool]]:
    """(imported package module, the statement, whether it sits inside a function) for each edge."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "avatarsdk":
                        out.append((_target(alias.name, mods), child, in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                if base.split(".")[0] == "avatarsdk":
                    for alias in child.names:
                        out.append((_target(f"{base}.{alias.name}", mods), child, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return out


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} has no layer in LAYERS: add it")
    return LAYERS[best]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in mods.items():
        for target, _, _ in _imports(module, path, mods):
            if target != module and (module, target) not in LAZY_FACADE:
                edges[module].add(target)
    return {m: edges[m] for m in mods}


def test_every_module_has_a_layer(graph):
    for module in graph:
        _layer(module)


def test_imports_never_point_to_a_higher_layer(graph):
    upward = sorted(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
                    for m, targets in graph.items() for t in targets if _layer(t) > _layer(m))
    assert upward == [], "\n".join(upward)


def test_the_import_graph_has_no_cycle(graph):
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert cycles == [], cycles


def test_the_lazy_facade_is_lazy():
    """The only allowed upward import is inside a function (it runs when the attribute is first used)."""
    mods = _modules()
    for module, target in LAZY_FACADE:
        found = [inner for t, _, inner in _imports(module, mods[module], mods) if t == target]
        assert found and all(found), (module, target)


def test_nothing_but_the_cli_imports_the_benchmark(graph):
    users = sorted(m for m, targets in graph.items()
                   if any(t == "avatarsdk.bench" or t.startswith("avatarsdk.bench.") for t in targets)
                   and not m.startswith("avatarsdk.bench"))
    assert users == ["avatarsdk.cli"]


def test_the_graph_walker_sees_every_kind_of_import(tmp_path):
    """Relative, dotted and in-function imports all become edges (the walker cannot miss a cycle that way)."""
    mods = {"avatarsdk.a": tmp_path / "a.py", "avatarsdk.b": tmp_path / "b.py",
            "avatarsdk.p": tmp_path / "p" / "__init__.py", "avatarsdk.p.c": tmp_path / "p" / "c.py"}
    (tmp_path / "p").mkdir()
    mods["avatarsdk.a"].write_text("import avatarsdk.b\n\ndef f():\n    from avatarsdk.p import c\n")
    mods["avatarsdk.p.c"].write_text("from .. import a\nfrom . import c\n")
    got = {(t, inner) for t, _, inner in _imports("avatarsdk.a", mods["avatarsdk.a"], mods)}
    assert got == {("avatarsdk.b", False), ("avatarsdk.p.c", True)}
    got = {t for t, _, _ in _imports("avatarsdk.p.c", mods["avatarsdk.p.c"], mods)}
    assert got == {"avatarsdk.a", "avatarsdk.p.c"}


def _function_imports() -> list[tuple[Path, int, str]]:
    """(file, line, source line) of every import statement written inside a function."""
    out = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text().split("\n")

            def visit(node: ast.AST, in_function: bool) -> None:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                        out.append((path, child.lineno, lines[child.lineno - 1]))
                    visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

            visit(ast.parse("\n".join(lines)), False)
    return out


def test_imports_inside_functions_say_why():
    """Imports sit at module level; the few that stay local (optional or heavy dependencies) carry a reason."""
    unexplained = []
    for path, line, text in _function_imports():
        above = path.read_text().split("\n")[line - 2]
        if "# local:" not in text and not above.strip().startswith("# local:"):
            unexplained.append(f"{path.relative_to(ROOT)}:{line}: {text.strip()}")
    assert unexplained == [], "\n".join(unexplained)
    assert len(_function_imports()) <= 20  # 276 before the imports moved to module level
