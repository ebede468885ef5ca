"""How a model reaches the device it computes on, for the length of one step of a run.

The steps of :mod:`pyramid_flow.orchestration` never move a model themselves: they ask its :class:`Placement` for
the model, saying how much memory the step needs beyond the weights (the memory model's estimate). The command
line places models with :class:`DevicePlacement` (resident, or offloaded to the CPU between steps); the ComfyUI
nodes with ComfyUI's model management (``load_models_gpu``), in ``nodes/runtime.py``.
"""

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import ContextManager, Iterator, Tuple, Type

import torch

# What an allocator raises when a step does not fit (torch.OutOfMemoryError from torch 2.5, CUDA's before).
OUT_OF_MEMORY: Tuple[Type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


class Placement(ABC):
    """A model and the way it is brought to its compute device for one step."""

    module: torch.nn.Module
    device: torch.device

    @abstractmethod
    def loaded(self, memory_required: int = 0) -> ContextManager[torch.nn.Module]:
        """The model, ready on :attr:`device`, for a ``with`` block; ``memory_required``: bytes the step needs
        beyond the weights."""

    def free_cache(self) -> None:
        """Return cached allocator memory (after an out-of-memory error, before a retry)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class DevicePlacement(Placement):
    """The command line's: the model stays on ``device``, or with ``offload`` waits on the CPU and moves to
    ``device`` only while a step runs (the official ``cpu_offloading``, for cards that cannot hold every model)."""

    def __init__(self, module: torch.nn.Module, device: torch.device, offload: bool = False):
        self.module, self.device, self.offload = module, torch.device(device), offload

    @contextmanager
    def loaded(self, memory_required: int = 0) -> Iterator[torch.nn.Module]:
        if self.offload:
            self.module.to(self.device)
        try:
            yield self.module
        finally:
            if self.offload:
                self.module.to("cpu")
                self.free_cache()
