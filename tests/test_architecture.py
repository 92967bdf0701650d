"""The layers of docs/architecture.md, checked on the source: every import of every module under
mclstudio/ (module level and inside functions, read with ast, nothing imported) goes to its own layer or
one below; no import cycle; recording/ and tui/ import nothing from mclstudio.training; the torch-free
modules at the bottom import neither torch nor numpy; and the layer table in the doc is this test's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

# Bottom first. Each layer maps a part's name to its modules: a name is that module and, for a package,
# everything inside it (the root package "mclstudio" is only its own __init__).
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"foundation": ("mclstudio", "mclstudio.errors", "mclstudio.choices", "mclstudio.formatting",
                    "mclstudio.files", "mclstudio.metrics", "mclstudio.precision", "mclstudio.transfer")},
    {"data": ("mclstudio.data",)},
    {"learners": ("mclstudio.learners",)},
    {"store": ("mclstudio.store",)},
    {"training": ("mclstudio.training",), "engine": ("mclstudio.engine",)},
    {"recording": ("mclstudio.recording",)},
    {"cli": ("mclstudio.cli", "mclstudio.__main__"), "tui": ("mclstudio.tui",)},
]
# Parts of one layer do not import each other, except along these (importer, imported):
SIDEWAYS = {("cli", "tui")}  # `open` and `replay` start the studio; the studio never calls the CLI
NO_TRAINING = ("recording", "tui")  # loading a model or a recording never imports training
TORCH_FREE = ("mclstudio", "mclstudio.errors", "mclstudio.choices", "mclstudio.formatting", "mclstudio.files")


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under package_dir."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package's modules that ``name`` imports anywhere in its file -> the first line doing so.

    ``from pkg import x`` counts as importing the module pkg.x when there is one, else pkg; a dotted
    name that is not a module counts as its nearest enclosing module. Relative imports are resolved."""
    root = next(iter(modules)).split(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != root:
                continue
            for alias in node.names:
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source, node.lineno)
    return found


def import_graph(package_dir: Path) -> dict[str, dict[str, int]]:
    modules = find_modules(package_dir)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def part_of(module: str, layers: list[dict[str, tuple[str, ...]]]) -> tuple[int, str] | None:
    """(layer index, part name) of a module: the part naming it or, most specifically, its package."""
    best: tuple[int, int, str] | None = None
    for level, parts in enumerate(layers):
        for part, names in parts.items():
            for n in names:
                inside = module == n or ("." in n and module.startswith(n + "."))
                if inside and (best is None or len(n) > best[0]):
                    best = (len(n), level, part)
    return None if best is None else (best[1], best[2])


def layering_problems(graph: dict[str, dict[str, int]], layers: list[dict[str, tuple[str, ...]]],
                      sideways: set[tuple[str, str]], no_training: tuple[str, ...]) -> list[str]:
    """One line per import that breaks the layers, per module placed in no layer, per import cycle."""
    problems = []
    root = next(iter(graph)).split(".")[0]
    for module in graph:
        if part_of(module, layers) is None:
            problems.append(f"{module} is in no layer (add it to docs/architecture.md and LAYERS)")
    for module, targets in graph.items():
        here = part_of(module, layers)
        if here is None:
            continue
        for target, line in targets.items():
            there = part_of(target, layers)
            if there is None:
                continue
            if there[0] > here[0]:
                problems.append(f"{module}:{line} imports {target}: {there[1]} is above {here[1]}")
            elif there[0] == here[0] and there[1] != here[1] and (here[1], there[1]) not in sideways:
                problems.append(f"{module}:{line} imports {target}: {here[1]} may not import {there[1]}")
            if here[1] in no_training and (target == f"{root}.training" or target.startswith(f"{root}.training.")):
                problems.append(f"{module}:{line} imports {target}: {here[1]} imports nothing from training")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(graph)]
    return problems


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others (Tarjan's strongly
    connected components of more than one module, or a module importing itself), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [group + [group[0]] for group in groups]


def heavy_imports(path: Path) -> list[str]:
    """The torch or numpy imports anywhere in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("torch", "numpy")]
    return found


# ---- the package itself ---------------------------------------------------------------------------------

def test_no_import_runs_upward_sideways_or_in_a_cycle():
    graph = import_graph(ROOT / "mclstudio")
    assert len(graph) > 80 and sum(len(t) for t in graph.values()) > 200  # the whole package was read
    assert layering_problems(graph, LAYERS, SIDEWAYS, NO_TRAINING) == []


def test_function_level_imports_are_seen():
    # The commands import their heavy modules inside functions: those edges must be in the graph.
    graph = import_graph(ROOT / "mclstudio")
    assert "mclstudio.training.trainer" in graph["mclstudio.cli.commands.train"]
    assert "mclstudio.tui.cli" in graph["mclstudio.cli.commands.open"]


def test_data_and_learners_stand_on_their_own():
    """What the doc says of the two lowest model layers: data/ imports from mclstudio only errors.py;
    learners/ imports nothing from mclstudio outside learners/."""
    graph = import_graph(ROOT / "mclstudio")
    def imported_from_outside(package: str) -> list[str]:
        inside = [m for m in graph if m == package or m.startswith(package + ".")]
        return sorted({t for m in inside for t in graph[m] if not (t == package or t.startswith(package + "."))})

    outside = {layer: imported_from_outside(f"mclstudio.{layer}") for layer in ("data", "learners")}
    assert outside == {"data": ["mclstudio.errors", "mclstudio.transfer"], "learners": ["mclstudio.transfer"]}


def test_the_torch_free_modules_import_neither_torch_nor_numpy():
    modules = find_modules(ROOT / "mclstudio")
    assert [line for name in TORCH_FREE for line in heavy_imports(modules[name])] == []


def test_the_doc_draws_the_layers_of_this_test():
    """docs/architecture.md's layer table (bottom first) lists, layer by layer, the modules and packages
    that LAYERS holds."""
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    drawn = []
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        paths = re.findall(r"`(mclstudio/[^`]*)`", cells[2])
        drawn.append(sorted(p.removesuffix("/").removesuffix(".py").replace("/", ".") for p in paths))
    expected = [sorted(n.replace("mclstudio.__init__", "mclstudio") for names in layer.values() for n in names)
                for layer in LAYERS]
    drawn = [sorted("mclstudio" if p == "mclstudio.__init__" else p for p in layer) for layer in drawn]
    assert drawn == expected


# ---- the checker on a planted package: each kind of break is reported ---------------------------------------

def write_package(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp / "pkg"


PLANTED_LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"foundation": ("pkg", "pkg.errors")},
    {"data": ("pkg.data",)},
    {"training": ("pkg.training",), "engine": ("pkg.engine",)},
    {"recording": ("pkg.recording",)},
    {"cli": ("pkg.cli",), "tui": ("pkg.tui",)},
]


def planted_problems(tmp_path: Path, files: dict[str, str]) -> list[str]:
    base = {"__init__.py": "", "errors.py": "", "data/__init__.py": "", "training/__init__.py": "",
            "engine/__init__.py": "", "recording/__init__.py": "", "cli/__init__.py": "", "tui/__init__.py": ""}
    graph = import_graph(write_package(tmp_path, {**base, **files}))
    return layering_problems(graph, PLANTED_LAYERS, {("cli", "tui")}, ("recording", "tui"))


def test_a_clean_planted_package_passes(tmp_path):
    assert planted_problems(tmp_path, {
        "data/episodes.py": "from pkg.errors import DataError\n",
        "engine/stream.py": "from ..data import episodes\n",
        "cli/main.py": "def run():\n    from pkg.tui import app\n    import pkg.training.loop\n",
        "tui/app.py": "from pkg.recording import hdf5\n",
        "recording/hdf5.py": "import pkg.engine.stream\n",
        "training/loop.py": "",
    }) == []


@pytest.mark.parametrize("files, problem", [
    ({"data/episodes.py": "def f():\n    from pkg.engine import stream\n", "engine/stream.py": ""},
     "pkg.data.episodes:2 imports pkg.engine.stream: engine is above data"),
    ({"data/episodes.py": "from . import sine\n", "data/sine.py": "import pkg.data.episodes\n"},
     "import cycle: pkg.data.episodes -> pkg.data.sine -> pkg.data.episodes"),
    ({"recording/hdf5.py": "from pkg.training.loop import x\n", "training/loop.py": ""},
     "pkg.recording.hdf5:1 imports pkg.training.loop: recording imports nothing from training"),
    ({"tui/app.py": "def f():\n    from pkg.training import loop\n", "training/loop.py": ""},
     "pkg.tui.app:2 imports pkg.training.loop: tui imports nothing from training"),
    ({"engine/stream.py": "from pkg.training import loop\n", "training/loop.py": ""},
     "pkg.engine.stream:1 imports pkg.training.loop: engine may not import training"),
    ({"tui/app.py": "from pkg.cli import main\n", "cli/main.py": ""},
     "pkg.tui.app:1 imports pkg.cli.main: tui may not import cli"),
    ({"helpers.py": ""}, "pkg.helpers is in no layer (add it to docs/architecture.md and LAYERS)"),
])
def test_each_kind_of_break_is_reported(tmp_path, files, problem):
    assert problem in planted_problems(tmp_path, files)
