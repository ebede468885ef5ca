"""Attention kernels of the DiT, chosen per model or per call, never process-wide.

A DiT runs every attention call through its :class:`AttentionBackend` (``PyramidDiT.attention_backend``, SDPA by
default, or the ``attention_backend`` argument of one call), so a faster kernel (ComfyUI's ``optimized_attention``
with sage, flash or xformers; ``sageattention`` / ``flash-attn`` standalone) is swapped in without touching the
blocks, and two models in one process can use different kernels. A backend that cannot take a key-padding mask
has ``supports_mask=False``: the DiT then splits its calls so that none needs a mask (see
``pyramid_flow.dit.sequence.masked_attention``). The VAE's per-frame attention always uses
:func:`sdpa_attention` (one 512-wide head, which the fast kernels do not serve).
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """q, k, v: [B, heads, L, head_dim]; mask: bool [B, 1, Lq or 1, Lk] (True = attend). Returns [B, heads, L, head_dim]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass(frozen=True)
class AttentionBackend:
    """An attention kernel: ``fn(q, k, v, mask)`` with the signature of :func:`sdpa_attention`.
    ``supports_mask=False``: ``fn`` is never given a mask."""

    fn: AttentionFn
    supports_mask: bool = True

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None and not self.supports_mask:
            raise ValueError("this attention backend takes no mask: split the call (see dit.sequence.masked_attention)")
        return self.fn(q, k, v, mask)


SDPA = AttentionBackend(sdpa_attention)
