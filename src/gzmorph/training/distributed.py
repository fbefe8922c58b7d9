"""Running as one of several processes started by ``torchrun`` (PyTorch's launcher): who am I, and how to agree.

gzmorph does not launch processes itself; torchrun does, on one machine or several, and sets RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE. Training then uses DistributedDataParallel over NCCL (GPUs) or gloo (CPUs), and
prediction splits its image list between the processes. Without torchrun every helper here is a no-op, so the
single-process code path is the same code.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from ..errors import GzmorphError

log = logging.getLogger("gzmorph")


@dataclass(frozen=True)
class Cluster:
    rank: int = 0  # this process among all processes
    world: int = 1  # number of processes in all
    local_rank: int = 0  # this process on its machine: picks its GPU
    local_world: int = 1  # processes on this machine: they share its CPU cores

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs progress."""
        return self.rank == 0


def from_env() -> Cluster:
    """The process's place, from torchrun's environment variables (a single process without them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as e:
        raise GzmorphError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK must be integers): {e}") from None
    if not (0 <= rank < world and 0 <= local_rank < local_world):
        raise GzmorphError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local_rank} "
                           f"LOCAL_WORLD_SIZE={local_world}")
    return Cluster(rank, world, local_rank, local_world)


def pick_device(cluster: Cluster, requested: str) -> torch.device:
    """Each process on a machine takes its own GPU (cuda:LOCAL_RANK); on CPUs they share the machine."""
    from ..precision import pick_device as pick

    device = pick(requested)
    if cluster.enabled and device.type == "cuda" and device.index is None:
        if cluster.local_rank >= torch.cuda.device_count():
            raise GzmorphError(f"LOCAL_RANK {cluster.local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                               f"start at most that many processes per node (--nproc-per-node)")
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    return device


def cpu_share(cluster: Cluster, requested: int | None) -> int:
    """CPU threads (or decode workers) for this process: the machine's cores split between its processes, so that
    two processes on two cores do not each start two threads and thrash."""
    if requested:
        return requested
    return max(1, len(os.sched_getaffinity(0)) // cluster.local_world)


@contextlib.contextmanager
def process_group(cluster: Cluster, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration of a job (NCCL between GPUs, gloo between CPU processes)."""
    if not cluster.enabled or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    log.debug("rank %d of %d joined the %s process group", cluster.rank, cluster.world, backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(cluster: Cluster) -> None:
    if not cluster.enabled:
        return
    if dist.get_backend() == "nccl":  # NCCL must be told the GPU, or it guesses (and warns)
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def node_leader_first(cluster: Cluster) -> Iterator[None]:
    """The first process of each machine runs the block first (e.g. decoding the images into that machine's cache),
    then the machine's other processes run it and find the cache ready, instead of all decoding the same files at
    once. Every process passes the one barrier once, so it cannot deadlock."""
    leader = cluster.local_rank == 0
    if not leader:
        barrier(cluster)
    yield
    if leader:
        barrier(cluster)


def all_sum(cluster: Cluster, t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all processes (in place; ``t`` itself where there is one process)."""
    if cluster.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
