"""Where a process stands in a multi-process run: its rank, the world size and its device.

perpo does not launch distributed jobs itself except `--processes K` on one machine; it reads what the common
launchers (`torchrun`, `accelerate launch`, `deepspeed`, SLURM wrappers that export the same variables) put in the
environment: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, and `MASTER_ADDR` when the ranks can meet through torch.distributed.
It reads them itself rather than through accelerate's `PartialState`, which initialises a process group as a
side effect: the shards of `perpo sample` run without one (each rank writes its own part file), and only a run
whose ranks can meet opens one, with gloo, for two barriers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from perpo.config import ConfigError


@dataclass(frozen=True)
class Launch:
    """This process's place in a run of `world` processes (rank 0 of 1 when started alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    rendezvous: bool = False
    """The ranks can meet (a launcher set MASTER_ADDR): barriers work, rank 0 can finish for everyone."""


def launch_from_env(environ: Mapping[str, str] = os.environ) -> Launch:
    """The launch a launcher's variables describe.

    Raises:
        ConfigError: the variables are not integers, or the rank lies outside the world.
    """
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err})") from err
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not a rank of WORLD_SIZE={world}: check the launcher's variables")
    return Launch(rank, world, local_rank, rendezvous=world > 1 and bool(environ.get("MASTER_ADDR")))


def rank_device(device: str, local_rank: int) -> str:
    """A rank's device: a bare "cuda" becomes the local rank's GPU (one GPU per process); anything else is kept."""
    import torch

    if device == "cuda" and torch.cuda.device_count() > 1:
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def threads_per_process(processes: int) -> int:
    """CPU threads for each of `processes` processes sharing this machine's cores (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // processes)


def free_port() -> int:
    """A TCP port free on this machine now, for a launcher's rendezvous."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
