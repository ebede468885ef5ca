"""Sampling over several processes with ``torch.distributed``: the two halves of classifier-free guidance on two
ranks (CFG parallel) and the image tokens of every DiT call over S ranks (Ulysses sequence parallel).

Every step of Pyramid Flow runs CFG: the DiT sees the negative and the positive prompt at batch 2. With CFG
parallel, the ranks of CFG half 0 compute the negative half and those of half 1 the positive half at batch 1, and
one ``all_gather`` of the two velocities per step gives every rank the guided velocity: up to 2x per step, with one
exchange of a [1, 16, 1, h, w] tensor per step. With sequence parallel S, each DiT call spreads its image tokens
over S ranks, which exchange queries, keys and values around every attention (:mod:`pyramid_flow.dit.sequence_parallel`):
the memory of the activations and the work of every layer divided by S, for 4 all-to-alls per block. Every rank
draws the same noise (it is keyed by seed, frame and stage), so all ranks hold the same latents throughout.

Ranks are laid out sequence-major: rank = cfg_half * S + sequence_rank, so a sequence group (the heavy traffic)
is S consecutive ranks, on one machine when S divides the GPUs per node, and a CFG pair (one small exchange per
step) may span machines.

Launch with ``torchrun --nproc-per-node N -m pyramid_flow ... --sequence-parallel S [--cfg-parallel]`` (several
machines: torchrun's ``--nnodes``, ``--rdzv-backend c10d``, ``--rdzv-endpoint``). :func:`from_environment` builds
the context from torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): NCCL when every rank has a CUDA
device, gloo otherwise. A collective that waits longer than ``timeout`` (a rank that died, a rank stuck on a bad
file) raises on every rank, and torchrun ends the others when one exits with an error: no run hangs.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from .dit.sequence_parallel import SequenceSplit

DEFAULT_TIMEOUT_S = 600  # longest wait for the other rank at one collective (a DiT step, the start-up barrier)


class TileRanks:
    """The tiles of a VAE decode dealt round-robin over every rank of the run; rank 0 gathers each chunk's pieces
    (through the CPU, so ranks on other machines or GPUs can send theirs) and assembles the frames
    (:class:`pyramid_flow.vae.tiling.TileShare`)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def gather(self, pieces: Dict[Tuple[int, int], torch.Tensor]) -> Optional[Dict[Tuple[int, int], torch.Tensor]]:
        gathered: Optional[List[Optional[Dict]]] = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object({key: piece.cpu() for key, piece in pieces.items()}, gathered, dst=0)
        if gathered is None:
            return None
        return {key: piece.to(self.device) for part in gathered for key, piece in part.items()}


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in a parallel run: its CFG half and its share of the sequence."""

    rank: int
    world_size: int
    cfg_rank: int  # 0: the negative prompt's half of each CFG step, 1: the positive prompt's (0 without CFG parallel)
    cfg_group: Optional[object]  # the process group of this rank's CFG pair; None: no CFG parallel
    device: torch.device
    sequence: Optional[SequenceSplit] = None  # this rank's share of the image tokens; None: no sequence parallel

    @property
    def is_main(self) -> bool:
        """The rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def splits_cfg(self) -> bool:
        """Whether the two CFG halves run on two ranks (each DiT call then runs at batch 1)."""
        return self.cfg_group is not None

    def tile_share(self) -> TileRanks:
        """The VAE decode's tiles spread over every rank of the run, gathered on rank 0."""
        return TileRanks(self.rank, self.world_size, self.device)

    def gather_halves(self, velocity: torch.Tensor) -> List[torch.Tensor]:
        """[negative half, positive half] of a CFG step, from this rank's half."""
        halves = [torch.empty_like(velocity) for _ in range(2)]
        dist.all_gather(halves, velocity.contiguous(), group=self.cfg_group)
        return halves


def splits_cfg(parallel: Optional[ParallelContext]) -> bool:
    """Whether a run with this context (None: one process) runs each CFG half on its own rank."""
    return parallel is not None and parallel.splits_cfg


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def from_environment(cfg_parallel: bool, sequence_parallel: int = 1, backend: Optional[str] = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S, device: Optional[str] = None) -> Optional[ParallelContext]:
    """The context of a torchrun launch (None for a plain single process). Refuses, before anything loads, a world
    size that does not fit the request, naming the arithmetic and the torchrun option."""
    if sequence_parallel < 1:
        raise ValueError(f"--sequence-parallel {sequence_parallel}: give the number of ranks that share each DiT "
                         "call's tokens (1: none).")
    parallel = cfg_parallel or sequence_parallel > 1
    if not launched_by_torchrun():
        if parallel:
            needed = sequence_parallel * (2 if cfg_parallel else 1)
            raise ValueError(f"{parallel_options(cfg_parallel, sequence_parallel)} needs {needed} processes: launch "
                             f"with torchrun --nproc-per-node {needed} -m pyramid_flow ...")
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
    halves = 2 if cfg_parallel else 1
    # Every rank creates every group, in the same order (torch.distributed requires it).
    sequence_groups = [dist.new_group(list(range(h * sequence_parallel, (h + 1) * sequence_parallel)))
                       for h in range(halves)] if sequence_parallel > 1 else []
    cfg_pairs = [dist.new_group([s, s + sequence_parallel]) for s in range(sequence_parallel)] if cfg_parallel else []
    cfg_half, sequence_rank = divmod(rank, sequence_parallel)
    split = SequenceSplit(sequence_rank, sequence_parallel, sequence_groups[cfg_half]) if sequence_groups else None
    return ParallelContext(rank, world, cfg_half, cfg_pairs[sequence_rank] if cfg_pairs else None, rank_device, split)


def parallel_options(cfg_parallel: bool, sequence_parallel: int) -> str:
    options = [f"--sequence-parallel {sequence_parallel}"] if sequence_parallel > 1 else []
    return " ".join(options + (["--cfg-parallel"] if cfg_parallel else []))


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
