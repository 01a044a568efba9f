"""Building a folder beside its place and swapping it in whole."""

from __future__ import annotations

import os
from pathlib import Path

from tiny_audio.folders import staging_folder, swap_in


def test_swap_in_replaces_the_folder_whole_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "model"
    (out / "old-only").mkdir(parents=True)
    staging = staging_folder(out)
    (staging / "weights").write_text("new")
    swap_in(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["weights"]  # replaced, never merged
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_staging_folder_removes_only_the_leftovers_of_dead_processes(tmp_path: Path) -> None:
    out = tmp_path / "set"
    dead = tmp_path / ".set.partial-999999999-abc"
    alive = tmp_path / f".set.partial-{os.getppid()}-abc"  # another build still running
    dead.mkdir()
    alive.mkdir()
    staging = staging_folder(out)
    assert not dead.exists() and alive.exists()
    assert staging.parent == tmp_path and staging.name.startswith(f".set.partial-{os.getpid()}-")
    assert not any(staging.iterdir())
