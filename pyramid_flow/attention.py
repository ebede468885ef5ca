"""The single attention entry point of the model code.

Every attention call in the DiT and the VAE goes through :func:`attention`, so a faster kernel
(ComfyUI's ``optimized_attention``, sage, flash) can be swapped in with :func:`set_attention_function`
without touching the blocks.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """q, k, v: [B, heads, L, head_dim]; mask: bool [B, 1, Lq, Lk] (True = attend). Returns [B, heads, L, head_dim]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_attention_fn: AttentionFn = sdpa_attention


def set_attention_function(fn: Optional[AttentionFn]) -> None:
    """Route all attention through ``fn`` (same signature as :func:`sdpa_attention`); ``None`` restores SDPA."""
    global _attention_fn
    _attention_fn = fn or sdpa_attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _attention_fn(q, k, v, mask)
