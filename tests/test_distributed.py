"""Two processes on the CPU (torchrun, gloo): train, checkpoint, resume; one console voice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.data_helpers import write_audiofolder
from tiny_audio.training import checkpoints

REPO = Path(__file__).resolve().parent.parent
DRIVER = """
import sys
from omegaconf import OmegaConf
from tiny_audio.config import to_config
from tiny_audio.training.run import run
run(to_config(OmegaConf.load(sys.argv[1])))
"""


def torchrun(tmp_path: Path, cfg) -> subprocess.CompletedProcess:
    config, driver = tmp_path / "cfg.yaml", tmp_path / "driver.py"
    OmegaConf.save(OmegaConf.structured(cfg), config)
    driver.write_text(DRIVER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(driver), str(config)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_two_processes_train_save_and_resume(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 16, "validation": 4})
    cfg = tiny_run_config(
        data, model={"projector_type": "moe"}, max_steps=6, save_steps=3, eval_steps=3, data={"num_workers": 1}
    )
    first = torchrun(tmp_path, cfg)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("Step 6/6 |") == 1  # the main process alone prints progress
    saved = checkpoints.load_training_state(tmp_path / "run" / "checkpoint-6")
    assert len(saved["ranks"]) == 2  # each rank's data position and random state

    cfg.training.max_steps, cfg.training.resume_from_checkpoint = 9, "latest"
    second = torchrun(tmp_path, cfg)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resumed from" in second.stdout and second.stdout.count("Step 9/9 |") == 1
    assert checkpoints.read_trainer_state(tmp_path / "run" / "checkpoint-9")["layout"]["processes"] == 2
