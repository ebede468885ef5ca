"""Blocks shared by both Pyramid Flow DiTs: norms, AdaLN modulation, feed-forward, joint attention.

Shapes: B batch, L tokens (text Lt + image N), D model width, H heads, d head dim.
Module and parameter names equal the official checkpoint keys (diffusers ``save_pretrained`` names).
Norms compute in float32 and return the activation dtype, as the official bf16 autocast run does.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import apply_rope
from .sequence import JointMask, masked_attention

Rope = Tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [L, d/2] float32


class RMSNorm(nn.Module):
    """RMSNorm over the head dim with a learned scale (the QK norm)."""

    def __init__(self, dim: int, eps: float, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As the official RMSNorm: normalise in fp32, cast to the activation dtype, then multiply by the scale.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight.to(device=x.device, dtype=x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm(x; eps 1e-6, no affine) * (1 + scale) + shift, in fp32. x [B, L, D]; shift, scale [B, D]."""
    normed = F.layer_norm(x.float(), x.shape[-1:], eps=1e-6)
    return (normed * (1 + scale.float()[:, None]) + shift.float()[:, None]).to(x.dtype)


class AdaLayerNorm(nn.Module):
    """Linear(SiLU(temb)) split into ``chunks`` modulation vectors (the checkpoint's ``norm*.linear``)."""

    def __init__(self, dim: int, chunks: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.chunks = chunks
        self.linear = operations.Linear(dim, chunks * dim, dtype=dtype, device=device)

    def emb(self, temb: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.linear(F.silu(temb)).chunk(self.chunks, dim=1)  # chunks x [B, D]


class AdaLayerNormZero(AdaLayerNorm):
    """6 chunks (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)."""

    def __init__(self, dim: int, dtype=None, device=None, operations=None):
        super().__init__(dim, 6, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.emb(temb)
        return modulate(x, shift_msa, scale_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroSingle(AdaLayerNorm):
    """3 chunks (shift, scale, gate)."""

    def __init__(self, dim: int, dtype=None, device=None, operations=None):
        super().__init__(dim, 3, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate = self.emb(temb)
        return modulate(x, shift, scale), gate


class AdaLayerNormContinuous(AdaLayerNorm):
    """2 chunks in the order (scale, shift) - reversed with respect to the zero variants (official
    ``modeling_normalization.py: AdaLayerNormContinuous``)."""

    def __init__(self, dim: int, dtype=None, device=None, operations=None):
        super().__init__(dim, 2, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.emb(temb)
        return modulate(x, shift, scale)


class GELUProjection(nn.Module):
    """Linear then tanh-GELU (diffusers ``GELU``, key ``net.0.proj``)."""

    def __init__(self, dim: int, inner_dim: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.proj = operations.Linear(dim, inner_dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """Linear(D -> 4D) -> GELU(tanh) -> Linear(4D -> D); ``net.1`` is the checkpoint's (empty) dropout slot."""

    def __init__(self, dim: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.net = nn.ModuleList(
            [
                GELUProjection(dim, 4 * dim, dtype=dtype, device=device, operations=operations),
                nn.Identity(),
                operations.Linear(4 * dim, dim, dtype=dtype, device=device),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: JointMask, rope: Rope) -> torch.Tensor:
    """RoPE on q, k [B, H, L, d], masked attention, heads merged -> [B, L, H*d]."""
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return masked_attention(q, k, v, mask).transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """q/k/v projections with per-head RMS QK norm (``to_q``, ``to_k``, ``to_v``, ``norm_q``, ``norm_k``)."""

    def __init__(self, dim: int, heads: int, eps: float, dtype=None, device=None, operations=None):
        super().__init__()
        self.heads = heads
        self.to_q = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.norm_q = RMSNorm(dim // heads, eps, dtype=dtype, device=device)
        self.norm_k = RMSNorm(dim // heads, eps, dtype=dtype, device=device)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, L, D] -> [B, H, L, d]

    def qkv(self, x: torch.Tensor):
        """x [B, L, D] -> normed q, normed k, v, each [B, H, L, d]."""
        q, k, v = (self.split_heads(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        return self.norm_q(q), self.norm_k(k), v


class JointAttention(SelfAttention):
    """Attention over [text; image] with separate projections per stream.

    ``context_norm`` is the name stem of the text-stream QK norms: ``norm_add`` (SD3) or ``norm_added`` (flux).
    With ``context_pre_only`` (SD3's last block) the text output is dropped and ``to_add_out`` is absent.
    """

    def __init__(self, dim, heads, eps, context_norm, context_pre_only=False, dtype=None, device=None, operations=None):
        super().__init__(dim, heads, eps, dtype=dtype, device=device, operations=operations)
        self.context_norm = context_norm
        self.add_q_proj = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.add_k_proj = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.add_v_proj = operations.Linear(dim, dim, dtype=dtype, device=device)
        setattr(self, context_norm + "_q", RMSNorm(dim // heads, eps, dtype=dtype, device=device))
        setattr(self, context_norm + "_k", RMSNorm(dim // heads, eps, dtype=dtype, device=device))
        # to_out.1 is the checkpoint's (empty) dropout slot.
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, dtype=dtype, device=device), nn.Identity()])
        self.to_add_out = None if context_pre_only else operations.Linear(dim, dim, dtype=dtype, device=device)

    def context_qkv(self, c: torch.Tensor):
        """c [B, Lt, D] -> normed q, normed k, v of the text stream, each [B, H, Lt, d]."""
        q, k, v = (self.split_heads(proj(c)) for proj in (self.add_q_proj, self.add_k_proj, self.add_v_proj))
        norm_q, norm_k = getattr(self, self.context_norm + "_q"), getattr(self, self.context_norm + "_k")
        return norm_q(q), norm_k(k), v

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: JointMask, rope: Rope):
        """x [B, N, D], c [B, Lt, D] -> (x_out [B, N, D], c_out [B, Lt, D] or None)."""
        streams = zip(self.context_qkv(c), self.qkv(x))
        q, k, v = (torch.cat(pair, dim=2) for pair in streams)  # [B, H, Lt+N, d], text first
        out = attend(q, k, v, mask, rope)  # [B, Lt+N, D]
        c_out, x_out = out[:, : c.shape[1]], out[:, c.shape[1] :]
        x_out = self.to_out[0](x_out)
        return x_out, None if self.to_add_out is None else self.to_add_out(c_out)


class JointTransformerBlock(nn.Module):
    """MMDiT block: AdaLN-Zero on both streams, joint attention, gated residual feed-forwards.

    SD3's last block is ``context_pre_only``: the text stream gets a continuous AdaLN, no output projection
    and no feed-forward, and its output is discarded (the block returns None for it).
    """

    def __init__(self, dim, heads, eps, context_norm, context_pre_only=False, dtype=None, device=None, operations=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNormZero(dim, **kw)
        self.norm1_context = AdaLayerNormContinuous(dim, **kw) if context_pre_only else AdaLayerNormZero(dim, **kw)
        self.attn = JointAttention(dim, heads, eps, context_norm, context_pre_only, **kw)
        self.ff = FeedForward(dim, **kw)
        self.ff_context = None if context_pre_only else FeedForward(dim, **kw)

    def forward(self, x, c, temb, mask, rope) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """x [B, N, D], c [B, Lt, D], temb [B, D] -> (c, x)."""
        x_mod, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        if self.context_pre_only:
            x_attn, _ = self.attn(x_mod, self.norm1_context(c, temb), mask, rope)
            return None, residual_mlp(x, x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, self.ff)
        c_mod, *c_chunks = self.norm1_context(c, temb)
        x_attn, c_attn = self.attn(x_mod, c_mod, mask, rope)
        c = residual_mlp(c, c_attn, *c_chunks, self.ff_context)
        return c, residual_mlp(x, x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, self.ff)


def residual_mlp(x, attn_out, gate_msa, shift_mlp, scale_mlp, gate_mlp, ff: FeedForward) -> torch.Tensor:
    """x += gate_msa * attn; x += gate_mlp * FF(modulated LN(x)). Chunks are [B, D]."""
    x = x + gate_msa[:, None] * attn_out
    return x + gate_mlp[:, None] * ff(modulate(x, shift_mlp, scale_mlp))
