"""A full output disk, for real: a small tmpfs (or loop-mounted ext4) file system, filled mid-run.

Mounting needs root, as CI runs; elsewhere these tests skip and say why.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.data_helpers import write_audiofolder
from tiny_audio import compose
from tiny_audio.model.build import PROJECTOR_FILE
from tiny_audio.recipe import run as run_module
from tiny_audio.training import checkpoints
from tiny_audio.training.disk import DiskFullError
from tiny_audio.training.hub import STAGING_DIR, HubPushCallback
from tiny_audio.training.trainer import Callback, Trainer

DISK_BYTES = 16 * 2**20
quiet = lambda _: None  # noqa: E731


def _mount(mountpoint: Path, scratch: Path) -> str | None:
    """Mount a DISK_BYTES file system at `mountpoint`; None on success, else why not."""
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if tmpfs.returncode == 0:
        return None
    image = scratch / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(DISK_BYTES)
    steps = [["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(mountpoint)]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True)
        except FileNotFoundError as missing:
            return f"tmpfs: {tmpfs.stderr.strip()}; loop device: {missing}"
        if done.returncode != 0:
            return f"tmpfs: {tmpfs.stderr.strip()}; loop device: {done.stderr.strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    why_not = _mount(mountpoint, tmp_path)
    if why_not is not None:
        pytest.skip(f"cannot mount a small file system here (needs root, as in CI): {why_not}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system refuses one more byte."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (2**20, 2**12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return ballast


class FillDiskAfter(Callback):
    """Fills the output disk right after checkpoint-`step` is saved, as a growing neighbour would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.ballast: Path | None = None

    def on_save(self, trainer: Trainer, checkpoint: Path) -> None:
        if checkpoint.name == f"checkpoint-{self.step}":
            self.ballast = fill(checkpoint.parent.parent)


def assert_intact(checkpoint: Path) -> None:
    assert checkpoints.is_complete(checkpoint)
    assert checkpoints.read_trainer_state(checkpoint)["step"] == int(checkpoint.name.split("-")[1])
    assert "optimizer" in checkpoints.load_training_state(checkpoint)
    assert load_file(str(checkpoint / PROJECTOR_FILE))


def no_partial_checkpoints(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name and not checkpoints.is_complete(p))


def test_a_full_disk_at_a_save_stops_in_one_line_and_the_run_resumes(
    tiny_run_config, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    output_dir = small_disk / "run"
    # preflight=False: its free-space estimate (checkpoints of real models) would refuse a 16 MiB disk.
    cfg = tiny_run_config(data, output_dir=str(output_dir), max_steps=6, save_steps=2, preflight=False)
    filler = FillDiskAfter(2)
    real_run = run_module.run
    # `ta train` as a user runs it, with the callback that fills the disk added.
    monkeypatch.setattr(compose, "load_config", lambda overrides: cfg)
    monkeypatch.setattr(run_module, "run", lambda config: real_run(config, callbacks=[filler], log=quiet))
    assert run_module.main([]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1, errors
    (message,) = errors
    assert message.startswith(f"error: the disk holding {output_dir} is full")
    assert "checkpoint-4 could not be written" in message
    assert f"the last complete checkpoint is {output_dir / 'checkpoint-2'}" in message
    assert message.endswith(f"training.resume_from_checkpoint=latest training.output_dir={output_dir}")
    # The half-written checkpoint is gone; the one before is whole.
    assert no_partial_checkpoints(output_dir) == []
    assert checkpoints.latest_checkpoint(output_dir) == output_dir / "checkpoint-2"
    assert_intact(output_dir / "checkpoint-2")

    assert filler.ballast is not None
    filler.ballast.unlink()
    cfg.training.resume_from_checkpoint = "latest"
    state = real_run(cfg, log=quiet)
    assert state.step == 6
    assert_intact(output_dir / "checkpoint-6")


class LocalHub:
    """Stands in for the Hub's servers (unreachable from tests): an upload copies into a directory."""

    endpoint = "https://hub.invalid"

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.uploads: list[str] = []

    def create_repo(self, *args: Any, **kwargs: Any) -> None: ...

    def upload_folder(self, *, folder_path: str, commit_message: str, **kwargs: Any) -> None:
        shutil.copytree(folder_path, self.repo, dirs_exist_ok=True)
        self.uploads.append(commit_message)


@pytest.mark.parametrize("links", ["hard links", "no hard links"])
def test_a_full_disk_while_tracking_and_pushing_corrupts_nothing(
    tiny_run_config, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: str
) -> None:
    if links == "no hard links":
        # A file system without hard links: the push must copy the checkpoint, on a full disk.
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    output_dir = small_disk / "run"
    cfg = tiny_run_config(
        data,
        output_dir=str(output_dir),
        max_steps=40,
        save_steps=2,
        logging_steps=1,
        report_to="tensorboard",
        preflight=False,
    )
    hub = HubPushCallback("someone/tiny-audio", retries=0, api=LocalHub(tmp_path / "hub-repo"))  # type: ignore[arg-type]
    lines: list[str] = []
    with pytest.raises(DiskFullError) as caught:
        run_module.run(cfg, callbacks=[FillDiskAfter(2), hub], log=lines.append)
    message = str(caught.value)
    assert "\n" not in message and "could not be written" in message
    assert f"the last complete checkpoint is {output_dir / 'checkpoint-2'}" in message
    assert no_partial_checkpoints(output_dir) == []
    assert_intact(output_dir / "checkpoint-2")
    staging = output_dir / STAGING_DIR
    assert not staging.exists() or not any(staging.iterdir())  # no half copy left to upload
    if links == "hard links":
        assert hub.api.uploads == ["Upload checkpoint-2"]
        uploaded, saved = (
            load_file(str(tmp_path / "hub-repo" / PROJECTOR_FILE)),
            load_file(str(output_dir / "checkpoint-2" / PROJECTOR_FILE)),
        )
        assert all(torch.equal(uploaded[k], saved[k]) for k in saved)
    else:
        assert hub.api.uploads == []
        assert any(line.startswith("warning: could not stage checkpoint-2 for the Hub upload") for line in lines)


def test_a_tracker_write_on_a_full_disk_is_one_line_and_never_hides_an_earlier_error(small_disk: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    output_dir = small_disk / "run"
    writer = SummaryWriter(str(output_dir))
    fill(small_disk)
    expected = r"the tracker logs could not be written; no complete checkpoint"
    with pytest.raises(DiskFullError, match=expected), run_module.full_disk_reported(output_dir, "the tracker logs"):
        for step in range(10000):
            writer.add_scalar("train/loss", 1.0, step)
        writer.flush()
    # Closing the tracker after another failure fails again on the full disk: the first error wins.
    with pytest.raises(KeyError, match="the first error"):
        try:
            raise KeyError("the first error")
        finally:
            with run_module.full_disk_reported(output_dir, "the tracker logs"), run_module._unless_failing():
                writer.close()
