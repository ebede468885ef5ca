"""The attention entry point of the DiT.

Every DiT attention call goes through :func:`attention`, so a faster kernel (ComfyUI's ``optimized_attention``
with sage, flash or xformers; ``sageattention`` / ``flash-attn`` standalone) can be swapped in with
:func:`set_attention_function` without touching the blocks. A backend that cannot take a key-padding mask is
registered with ``supports_mask=False``: the DiT then splits its calls so that none needs a mask (see
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
    fn: AttentionFn
    supports_mask: bool


_backend = AttentionBackend(sdpa_attention, supports_mask=True)


def set_attention_function(fn: Optional[AttentionFn], supports_mask: bool = True) -> None:
    """Route the DiT's attention through ``fn`` (same signature as :func:`sdpa_attention`); ``None`` restores SDPA.
    ``supports_mask=False``: ``fn`` is never given a mask."""
    global _backend
    _backend = AttentionBackend(fn or sdpa_attention, supports_mask if fn is not None else True)


def attention_takes_masks() -> bool:
    return _backend.supports_mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    if mask is not None and not _backend.supports_mask:
        raise ValueError("this attention backend takes no mask: split the call (see dit.sequence.masked_attention)")
    return _backend.fn(q, k, v, mask)
