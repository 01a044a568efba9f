"""`ta train --nproc N`: the training entry point under torchrun, one process per GPU, several nodes optional."""

from __future__ import annotations

import sys


def torchrun_command(
    nproc: int,
    overrides: list[str],
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The torchrun command line; several nodes meet at `rdzv_endpoint` (HOST:PORT of node 0)."""
    if nproc < 1:
        raise ValueError(f"--nproc={nproc} is not allowed: at least 1 process per node")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank={node_rank} is not allowed: between 0 and --nnodes - 1 ({nnodes - 1})")
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address, reachable from every node)")
    command = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        command += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
        ]
    else:
        command += ["--standalone"]
    return [*command, "-m", "tiny_audio.recipe", *overrides]
