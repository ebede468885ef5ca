"""The two halves of classifier-free guidance on two devices of one process (two GPUs in one ComfyUI).

The caller's thread runs the negative half of every guided DiT call on its device while a worker thread runs the
positive half on a second device, with its own copy of the DiT; the positive velocity then joins the negative one
on the caller's device. Each half runs at batch 1, so a step takes about the time of one half. This is the
in-process counterpart of CFG parallel over ranks (:mod:`pyramid_flow.parallel`).
"""

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List

import torch

from .text.embeddings import TextEmbeddings


class CfgOnTwoDevices:
    """A second DiT on ``device`` that computes the positive half of each guided step, in one worker thread."""

    def __init__(self, dit: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        self.dit, self.device, self.dtype = dit, torch.device(device), dtype
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pyramid_flow_cfg", initializer=self._use_device)
        self._text: Dict[int, TextEmbeddings] = {}

    def _use_device(self) -> None:
        if self.device.type == "cuda":  # the worker's kernels and allocations go to its device
            torch.cuda.set_device(self.device)

    def start(self, text: TextEmbeddings, clips: List[torch.Tensor], sample: torch.Tensor,
              timestep: torch.Tensor) -> Future:
        """Begin the positive half: ``text`` the positive prompt, clips and sample [1, C, t, h, w] on any device."""
        key = id(text)
        if key not in self._text:
            self._text[key] = text.to(device=self.device, dtype=self.dtype)
        text = self._text[key]
        moved = [clip.to(self.device) for clip in clips + [sample]]
        return self._pool.submit(self._predict, moved, text, timestep.to(self.device))

    def _predict(self, clips: List[torch.Tensor], text: TextEmbeddings, timestep: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread: the worker's starts on
            return self.dit(clips, text.prompt_embeds, text.attention_mask, text.pooled, timestep)

    @staticmethod
    def result(started: Future, device: torch.device) -> torch.Tensor:
        """The positive velocity on ``device`` (the negative half's); the worker's error, if it failed."""
        return started.result().to(device)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
