"""``torch.compile`` of the DiT's repeated blocks for the length of one sampling run.

Only the blocks are compiled: they hold nearly all the work, every block of a list shares one compiled graph
(parameters are graph inputs), and the varying-length [text; history; noisy clip] sequence assembly around them
stays eager. The original blocks are put back afterwards, so the weights, their state-dict keys and any offload
hooks stay those of the uncompiled model.
"""

from contextlib import contextmanager
from typing import Iterator, List, Mapping, Optional

import torch
import torch.nn as nn

COMPILE_BACKENDS = ("inductor", "cudagraphs", "aot_eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def block_lists(dit: nn.Module) -> List[nn.ModuleList]:
    """The DiT's top-level lists of repeated blocks (double/joint blocks, miniFLUX's single blocks)."""
    return [child for child in dit.children() if isinstance(child, nn.ModuleList)]


def check_compile_options(options: Mapping) -> None:
    backend, mode = options.get("backend", "inductor"), options.get("mode")
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"Unknown torch.compile backend '{backend}'; use one of {', '.join(COMPILE_BACKENDS)}.")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"Unknown torch.compile mode '{mode}'; use one of {', '.join(COMPILE_MODES)}.")


@contextmanager
def compiled_blocks(dit: nn.Module, options: Optional[Mapping] = None) -> Iterator[nn.Module]:
    """Inside the block, ``dit``'s blocks run through ``torch.compile(block, **options)``; ``options=None``
    leaves the model eager. Compilation happens on the first call of each new sequence shape (later shapes
    compile once as dynamic), and dynamo's cache keeps it for the next run of the same model."""
    if options is None:
        yield dit
        return
    check_compile_options(options)
    lists = block_lists(dit)
    originals = [list(blocks) for blocks in lists]
    try:
        for blocks in lists:
            for index, block in enumerate(blocks):
                blocks[index] = torch.compile(block, **options)
        yield dit
    finally:
        for blocks, eager in zip(lists, originals):
            for index, block in enumerate(eager):
                blocks[index] = block
