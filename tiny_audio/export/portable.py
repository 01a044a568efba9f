"""Copy tiny_audio's own inference modules next to an exported model, imports made relative.

An exported model must load where tiny_audio is not installed, yet compute exactly what
`ta transcribe` computes. Rather than keeping a second copy of the encoder loading, projectors,
prompt builder, collator, decoding and audio reading, the export copies those modules verbatim
and only rewrites their `tiny_audio` imports into imports of the copied files. An import that
has no copy here stops the export, naming the file, so the exported code cannot silently drift.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

# tiny_audio module -> file name in the exported directory (transformers loads these as siblings).
PORTABLE_MODULES: dict[str, str] = {
    "tiny_audio.prompts": "tiny_audio_prompts",
    "tiny_audio.data.skips": "tiny_audio_skips",
    "tiny_audio.data.audio": "tiny_audio_audio",
    "tiny_audio.data.collator": "tiny_audio_collator",
    "tiny_audio.model.encoder": "tiny_audio_encoder",
    "tiny_audio.projector_registry": "tiny_audio_projector_registry",
    "tiny_audio.model.projectors": "tiny_audio_projectors",
    "tiny_audio.model.speech_llm": "tiny_audio_speech_llm",
    "tiny_audio.evaluation": "tiny_audio_evaluation",
    "tiny_audio.evaluation.transcribe": "tiny_audio_transcribe",
}
# Names the copies may import from modules that are not copied, each with the stand-in it gets.
# ModelConfig is only a type annotation there; the exported model passes a plain namespace.
STAND_INS: dict[tuple[str, str], str] = {("tiny_audio.config", "ModelConfig"): "from typing import Any as ModelConfig"}


class NotPortableError(RuntimeError):
    """A copied module imports a part of tiny_audio that an exported model would not have."""


def portable_source(module: str) -> str:
    """The source of `module` with every tiny_audio import pointing at the copied siblings."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise NotPortableError(f"cannot find the source of {module}")
    source = Path(spec.origin).read_text()
    lines = source.splitlines(keepends=True)
    # Replace from the bottom so earlier line numbers stay valid.
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom | ast.Import)]
    for node in sorted(imports, key=lambda n: n.lineno, reverse=True):
        replacement = _rewrite(node, module)
        if replacement is None:
            continue
        indent = lines[node.lineno - 1][: node.col_offset]
        lines[node.lineno - 1 : node.end_lineno] = [f"{indent}{line}\n" for line in replacement]
    return "".join(lines)


def _rewrite(node: ast.Import | ast.ImportFrom, where: str) -> list[str] | None:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] == "tiny_audio"]
        if names:
            raise NotPortableError(f"{where} uses `import {names[0]}`; use `from ... import` so it can be copied")
        return None
    if node.level or not node.module or node.module.split(".")[0] != "tiny_audio":
        return None
    out = []
    for alias in node.names:
        bound = alias.asname or alias.name
        submodule = f"{node.module}.{alias.name}"
        if submodule in PORTABLE_MODULES:  # `from tiny_audio.data import skips`
            # transformers copies a remote-code file's siblings only when named as `from .sibling import`:
            # `from . import sibling` would load only if another file happened to name it.
            raise NotPortableError(
                f"{where} imports the module {submodule} (`from {node.module} import {alias.name}`), which an "
                f"exported model would not load; import the names it uses: `from {submodule} import ...`"
            )
        if node.module in PORTABLE_MODULES:
            alias_part = f" as {alias.asname}" if alias.asname else ""
            out.append(f"from .{PORTABLE_MODULES[node.module]} import {alias.name}{alias_part}")
        elif (node.module, alias.name) in STAND_INS and bound == alias.name:
            out.append(STAND_INS[(node.module, alias.name)])
        else:
            raise NotPortableError(
                f"{where} imports {alias.name} from {node.module}, which exported models do not carry; "
                f"add {node.module} to PORTABLE_MODULES in {__name__} or move the import out of {where}"
            )
    return out


def write_portable_modules(directory: Path) -> list[str]:
    """Write every portable module into `directory`; returns the file names written."""
    written = []
    for module, name in PORTABLE_MODULES.items():
        (directory / f"{name}.py").write_text(portable_source(module))
        written.append(f"{name}.py")
    return written
