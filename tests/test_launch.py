"""`ta train --nproc N`: the torchrun command it runs, and its one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tiny_audio.cli import app
from tiny_audio.recipe.launch import torchrun_command


def test_one_node_runs_standalone() -> None:
    command = torchrun_command(2, ["+experiments=mlp", "training.max_steps=10"], python="py")
    assert command == [
        "py", "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        "-m", "tiny_audio.recipe", "+experiments=mlp", "training.max_steps=10",
    ]  # fmt: skip


def test_two_nodes_meet_at_the_rendezvous_endpoint() -> None:
    command = torchrun_command(8, ["+experiments=mlp"], nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500")
    assert "--nnodes=2" in command and "--node_rank=1" in command
    assert "--rdzv_backend=c10d" in command and "--rdzv_endpoint=10.0.0.1:29500" in command
    assert "--standalone" not in command and command[-3:] == ["-m", "tiny_audio.recipe", "+experiments=mlp"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nproc", "0"], "--nproc=0 is not allowed"),
        (["--nproc", "2", "--nnodes", "2"], "--nnodes > 1 needs --rdzv-endpoint HOST:PORT"),
        (
            ["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"],
            "--node-rank=2 is not allowed",
        ),
    ],
)
def test_bad_launch_options_fail_in_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["train", *args, "+experiments=mlp"])
    assert result.exit_code == 2 and message in result.output
