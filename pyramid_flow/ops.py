"""The default layer namespace of the models: ``torch.nn``, except a Linear and a Conv3d that take oneDNN on the CPU.

Both give the same result as torch's default CPU kernels up to float rounding (a few ulps), and are faster there:

- Conv3d: torch runs a batch-1 3-D convolution with its slow native kernel whenever N * C * T * H < 20480 (a
  heuristic written for 2-D convolutions): small-channel frames at full resolution and short temporal chunks hit
  it and run 4-8x slower than with oneDNN.
- Linear: torch's float32 CPU matmul is MKL's sgemm, which takes a generic code path on non-Intel CPUs: on an AMD
  EPYC (Zen, AVX-512) oneDNN's matmul runs the DiT's projections 2x faster (bench/vs_official.py); on Intel CPUs
  the two are level. Inference in eager mode only: with autograd recording, or under torch.compile (whose own
  lowering picks the kernels), F.linear runs.

ComfyUI passes its own ``comfy.ops`` namespaces instead of this one.

oneDNN keeps every primitive it builds, with buffers sized for its shapes, in two caches of 1024 entries (its own,
and PyTorch's ideep LRU cache). The DiT's sequence grows with every latent frame, so each unit of a video builds new
primitives: unbounded, a float32 CPU run of a 30 s video held 1.8 GB more than with MKL (bench/history_window.py).
:func:`bound_onednn_caches` bounds both to ONEDNN_CACHE_CAPACITY entries, enough for the shapes of one sampling
step. It is a process setting (oneDNN reads the variables when it first runs), so importing this package sets
nothing: the command line, ``PyramidFlowPipeline.from_pretrained`` and the ComfyUI pack's entry point call it.
Variables the user has set win (set both to 1024, oneDNN's default, to keep unbounded caches).
"""

import os
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN_CACHE_CAPACITY = 32
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> None:
    """Bound oneDNN's two primitive caches for this process, unless the user has set them; effective when called
    before oneDNN first runs."""
    for variable in ONEDNN_CACHE_VARIABLES:
        os.environ.setdefault(variable, str(capacity))


Conv2d = nn.Conv2d
GroupNorm = nn.GroupNorm
LayerNorm = nn.LayerNorm


def onednn_available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if onednn_available(x) and not recording and not torch.compiler.is_compiling():
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int] = (1, 1, 1), groups: int = 1) -> torch.Tensor:
    """F.conv3d with zero padding given per dimension, through oneDNN on the CPU (given dense weight and bias:
    aten's mkldnn_convolution reads a strided bias view as if it were dense, silently)."""
    if onednn_available(x):
        bias = None if bias is None else bias.contiguous()
        return torch.ops.aten.mkldnn_convolution(x, weight.contiguous(), bias, list(padding), list(stride),
                                                 list(dilation), groups)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros" and isinstance(self.padding, tuple):
            return conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
