"""Sampling over several processes with ``torch.distributed``: the two halves of classifier-free guidance on two
ranks (CFG parallel).

Every step of Pyramid Flow runs CFG: the DiT sees the negative and the positive prompt at batch 2. With CFG
parallel, rank 0 of each pair computes the negative half and rank 1 the positive half at batch 1, and one
``all_gather`` of the two velocities per step gives both ranks the guided velocity; every rank draws the same noise
(it is keyed by seed, frame and stage), so all ranks hold the same latents throughout. Up to 2x per step, with one
exchange of a [1, 16, 1, h, w] tensor per step.

Launch with ``torchrun --nproc-per-node 2 -m pyramid_flow ... --cfg-parallel`` (several machines: torchrun's
``--nnodes``, ``--rdzv-backend c10d``, ``--rdzv-endpoint``). :func:`from_environment` builds the context from
torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): NCCL when every rank has a CUDA device, gloo
otherwise. A collective that waits longer than ``timeout`` (a rank that died, a rank stuck on a bad file) raises on
every rank, and torchrun ends the others when one exits with an error: no run hangs.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600  # longest wait for the other rank at one collective (a DiT step, the start-up barrier)


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in a parallel run: CFG pairs of ranks (rank 0 of a pair: negative half)."""

    rank: int
    world_size: int
    cfg_rank: int  # 0: the negative prompt's half of each CFG step, 1: the positive prompt's
    cfg_group: Optional[object]  # the process group of this rank's CFG pair
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The rank that writes files and shows progress."""
        return self.rank == 0

    def gather_halves(self, velocity: torch.Tensor) -> List[torch.Tensor]:
        """[negative half, positive half] of a CFG step, from this rank's half."""
        halves = [torch.empty_like(velocity) for _ in range(2)]
        dist.all_gather(halves, velocity.contiguous(), group=self.cfg_group)
        return halves


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def from_environment(cfg_parallel: bool, sequence_parallel: int = 1, backend: Optional[str] = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S, device: Optional[str] = None) -> Optional[ParallelContext]:
    """The context of a torchrun launch (None for a plain single process without ``cfg_parallel``). Refuses, before
    anything loads, a world size that does not fit the request, naming the arithmetic and the torchrun option."""
    if sequence_parallel != 1:
        raise ValueError(f"--sequence-parallel {sequence_parallel}: sequence parallel is not available yet; use "
                         "--cfg-parallel with 2 processes (torchrun --nproc-per-node 2).")
    if not launched_by_torchrun():
        if cfg_parallel:
            raise ValueError("--cfg-parallel needs 2 processes: launch with torchrun --nproc-per-node 2 -m pyramid_flow "
                             "... --cfg-parallel.")
        return None
    world = int(os.environ["WORLD_SIZE"])
    needed = sequence_parallel * (2 if cfg_parallel else 1)
    if world != needed:
        raise ValueError(f"torchrun started {world} processes, but --sequence-parallel {sequence_parallel} x "
                         f"{'2 (--cfg-parallel)' if cfg_parallel else '1 (no --cfg-parallel)'} needs {needed}: "
                         f"launch torchrun with --nproc-per-node {needed} (across all nodes).")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > local_rank and device != "cpu"
    backend = backend or ("nccl" if use_cuda else "gloo")
    rank_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(rank_device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    pairs = [dist.new_group([2 * pair, 2 * pair + 1]) for pair in range(world // 2)] if cfg_parallel else []
    group = pairs[rank // 2] if pairs else None
    return ParallelContext(rank, world, rank % 2 if cfg_parallel else 0, group, rank_device)


def check_same_arguments(context: ParallelContext, arguments: str) -> None:
    """Every rank must run the same request: refused, naming the rank, when one differs."""
    gathered: List[Optional[str]] = [None] * context.world_size
    dist.all_gather_object(gathered, arguments)
    differing = [rank for rank, value in enumerate(gathered) if value != gathered[0]]
    if differing:
        raise ValueError(f"Ranks {differing} were started with other arguments than rank 0: every process of a "
                         "parallel run must get the same command line.")


@contextmanager
def main_rank_first(context: Optional[ParallelContext]) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks: for work on shared files (a download, the built-in
    tiny model), which two ranks must not write at once."""
    if context is not None and not context.is_main:
        dist.barrier()
    yield
    if context is not None and context.is_main:
        dist.barrier()


def shutdown(context: Optional[ParallelContext]) -> None:
    if context is not None and dist.is_initialized():
        dist.destroy_process_group()
