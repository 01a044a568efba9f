"""The package's layout: no import circles, and no room importing a room above it.

A room is a top-level module or sub-package of `tiny_audio`. LEVELS lists the rooms from the
ground up: a module may import its own room and the rooms of any lower level, never a room of its
own level or above. Imports inside functions count (a lazy import is still a dependency); those
under `if TYPE_CHECKING:` do not (they never run). A new room must be placed in LEVELS.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "tiny_audio"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LEVELS: list[tuple[str, ...]] = [
    # The inference runtime (with the projector registry config validates against): it imports nothing
    # else of the package, so an export copies it whole (tests/test_runtime.py).
    ("runtime",),
    # The ground: typed config, the stand-in tokenizer, warning filters, the machine's abilities,
    # shared file and token helpers. Each imports nothing of the package but the runtime.
    ("config", "tokenizer", "quiet", "hardware", "folders", "hub_token"),
    ("model", "compose"),  # the model and Hydra composition, each on the ground alone
    ("data",),  # sources, streaming, augmentation, synthetic speech and its sentence grammar
    # The loop, its checkpoints and the callbacks that watch it; the random-weight fixtures, whose
    # tokenizer learns the speech grammar's sentences.
    ("training", "fixtures"),
    # Siblings above the loop: the eval callback is a training callback; the card reads the run
    # record a checkpoint carries.
    ("evaluation", "export"),
    ("recipe",),  # wires training, evaluation and export into one run
    ("benchmark", "miniature", "remote", "serve"),  # the areas a person runs, each with its commands
    ("cli",),  # `ta`: every area's commands
]


def _modules() -> dict[str, Path]:
    """Every module of the package; a folder without __init__.py (export/hub_code) is payload, not package."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        folder = path.parent
        if any(not (part / "__init__.py").exists() for part in [folder, *folder.parents] if part.is_relative_to(ROOT)):
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Every dotted name imported anywhere in `tree`; `from A import b` gives A.b (b may be a submodule)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (the longest known prefix of each imported name)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != PACKAGE and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def level(room_name: str) -> int:
    for i, rooms in enumerate(LEVELS):
        if room_name in rooms:
            return i
    raise AssertionError(f"room '{room_name}' is not placed in LEVELS (tests/test_layout.py): place it there")


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _loop(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, through the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no loop through {start}")  # unreachable for a strongly connected component


def test_every_room_is_placed():
    unplaced = sorted({room(m) for m in import_graph() if room(m)} - {r for rooms in LEVELS for r in rooms})
    assert not unplaced, f"rooms not placed in LEVELS (tests/test_layout.py): {', '.join(unplaced)}"


def test_no_import_circles():
    graph = import_graph()
    found = [f"{' -> '.join(_loop(graph, c))}   (all in it: {', '.join(sorted(c))})" for c in circles(graph)]
    assert not found, "import circles in the package:\n" + "\n".join(found)


def test_no_room_imports_a_room_above_or_beside_it():
    graph = import_graph()
    upward = [
        f"{module} ({room(module)}) -> {target} ({room(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if room(module) and room(target) != room(module) and level(room(target)) >= level(room(module))
    ]
    assert not upward, "imports that run up (or across one level):\n" + "\n".join(upward)


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from tiny_audio.cli import app\n"
        "def f():\n    from tiny_audio.training import trainer\n"
    )
    names = _imported_names(tree, "tiny_audio.data.x", is_package=False)
    assert "tiny_audio.training.trainer" in names and "tiny_audio.cli.app" not in names
