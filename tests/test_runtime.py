"""The inference runtime imports nothing else of tiny_audio, so that `ta export` can copy it as it is.

In an export its modules sit flat beside the modelling code, loaded by transformers as siblings:
they import one another only as `from .sibling import name` (the form transformers follows), and
outside packages only those an exported model's receiver has.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tiny_audio.export.export import HUB_CODE_DIR, RUNTIME_DIR

# What an exported model's receiver installs to run it (the modelling code needs the same).
EXPORT_REQUIREMENTS = {
    "accelerate",
    "huggingface_hub",
    "numpy",
    "peft",
    "safetensors",
    "soundfile",
    "soxr",
    "torch",
    "transformers",
}


def _imports(path: Path) -> list[tuple[int, ast.Import | ast.ImportFrom]]:
    nodes = [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Import | ast.ImportFrom)]
    return [(n.lineno, n) for n in nodes]


def _runtime_modules() -> list[Path]:
    return sorted(RUNTIME_DIR.glob("*.py"))


def _wrong_imports(path: Path, siblings: set[str]) -> list[str]:
    """Imports of tiny_audio, and relative ones other than `from .sibling import name`, anywhere in `path`."""
    wrong = []
    for line, node in _imports(path):
        where = f"{path.name}:{line}"
        if isinstance(node, ast.Import):
            wrong += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] == "tiny_audio"]
        elif node.level == 0 and (node.module or "").split(".")[0] == "tiny_audio":
            wrong.append(f"{where} imports from {node.module}")
        elif node.level and (node.level != 1 or node.module not in siblings):
            wrong.append(f"{where} imports from {'.' * node.level}{node.module or ''}")
    return wrong


def test_the_runtime_imports_nothing_else_of_tiny_audio():
    siblings = {path.stem for path in _runtime_modules()}
    wrong = [found for path in _runtime_modules() for found in _wrong_imports(path, siblings)]
    assert not wrong, "the runtime must import only itself, as `from .sibling import name`:\n" + "\n".join(wrong)


def test_the_runtime_needs_only_what_an_export_requires():
    outside = []
    for path in _runtime_modules():
        for line, node in _imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in EXPORT_REQUIREMENTS:
                    outside.append(f"{path.name}:{line} imports {name}")
    assert not outside, "an exported model's receiver would lack:\n" + "\n".join(outside)


def test_no_runtime_module_takes_the_name_of_the_exports_own_code():
    exported = {path.name for path in _runtime_modules() if path.name != "__init__.py"}
    assert not exported & {path.name for path in HUB_CODE_DIR.glob("*.py")}


def test_the_check_sees_lazy_package_imports_and_relative_ones_transformers_would_not_copy(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text(
        "from .prompts import AUDIO_TOKEN\n"
        "def f():\n    from tiny_audio.config import ModelConfig\n"
        "from ..data import skips\nfrom . import prompts\nfrom .missing import x\n"
    )
    assert sorted(line.split(" ", 1)[0] for line in _wrong_imports(module, {"prompts"})) == [
        "m.py:3",
        "m.py:4",
        "m.py:5",
        "m.py:6",
    ]
