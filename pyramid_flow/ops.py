"""The default layer namespace of the models: ``torch.nn``, except a Conv3d that takes oneDNN on the CPU.

On the CPU torch runs a batch-1 3-D convolution with its slow native kernel whenever N * C * T * H < 20480 (a
heuristic written for 2-D convolutions): small-channel frames at full resolution and short temporal chunks hit it
and run 4-8x slower than with oneDNN, which gives the same result up to float rounding. ComfyUI passes its own
``comfy.ops`` namespaces instead of this one.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

Linear = nn.Linear
Conv2d = nn.Conv2d
GroupNorm = nn.GroupNorm
LayerNorm = nn.LayerNorm


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and self.padding_mode == "zeros"
                and torch.backends.mkldnn.is_available() and isinstance(self.padding, tuple)):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, list(self.padding), list(self.stride),
                                                     list(self.dilation), self.groups)
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
