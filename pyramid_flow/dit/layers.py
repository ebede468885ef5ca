"""Blocks shared by both Pyramid Flow DiTs: norms, AdaLN modulation, feed-forward, joint attention.

Shapes: B batch, L tokens (text Lt + image N), D model width, H heads, d head dim.
Module and parameter names equal the official checkpoint keys (diffusers ``save_pretrained`` names).
Norms compute in float32 and return the activation dtype, as the official bf16 autocast run does.
"""

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import apply_rope
from .sequence import JointMask, masked_attention

Rope = Tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [1, L, d/2] float32

# Token-wise work (norms, the MLPs) runs in TOKEN_PIECES equal pieces of the sequence: its float32 and 4D-wide
# temporaries are then a fifth of the sequence's, below what the attention of the same block holds, so they never
# set the peak. Sequences shorter than MIN_PIECE_TOKENS per piece are not split (too little work per kernel).
TOKEN_PIECES = 5
MIN_PIECE_TOKENS = 256


def per_token_chunks(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``fn`` of token-wise inputs [B, L, *], computed over TOKEN_PIECES equal pieces of the tokens and written into
    one [B, L, *] output: ``out`` when given (it may be one of the inputs: a piece is read before it is written).
    ``fn`` must treat every token on its own (linear layers, norms, activations)."""
    length = inputs[0].shape[1]
    pieces = min(TOKEN_PIECES, length // MIN_PIECE_TOKENS)
    if pieces <= 1:
        return fn(*inputs) if out is None else out.copy_(fn(*inputs))
    size = -(-length // pieces)
    for start in range(0, length, size):
        piece = fn(*(t[:, start : start + size] for t in inputs))
        if out is None:
            out = piece.new_empty(piece.shape[0], length, *piece.shape[2:])
        out[:, start : start + piece.shape[1]] = piece
    return out


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
    """LayerNorm(x; eps 1e-6, no affine) * (1 + scale) + shift, in fp32. x [B, L, D]; shift, scale [B, D].
    Over chunks of tokens, so the float32 temporaries are a chunk's."""
    scale, shift = 1 + scale.float()[:, None], shift.float()[:, None]

    def chunk(tokens: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(tokens.float(), tokens.shape[-1:], eps=1e-6)
        return (normed * scale + shift).to(tokens.dtype)

    return per_token_chunks(chunk, x)


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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: JointMask) -> torch.Tensor:
    """Masked attention of q, k, v [B, H, L, d] (RoPE applied), heads merged -> [B, L, H*d].

    q, k and v must be the caller's own projections, views of [B, L, H, d] memory: the output is written over q
    (each frame's queries are read once, before their output is written), so the result is q's memory, merged
    into [B, L, H*d] without a copy. Under sequence parallel (``mask.split``) q, k, v hold this rank's image tokens
    and the exchanges of :mod:`pyramid_flow.dit.sequence_parallel` run around the attention."""
    if mask.split is not None:
        return mask.split.attend(q, k, v, mask)
    return masked_attention(q, k, v, mask, out=q).transpose(1, 2).flatten(2)


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

    def project_heads(self, which: str, x: torch.Tensor, rope: Optional[Rope], text: bool = False,
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q, k or v (``which``) of tokens x [B, L, D] -> token-major [B, L, H, d]: projected, QK-normed and
        rotated (``rope``: cos, sin [1, L, d/2] of these tokens; None for v) over pieces of the tokens, into
        ``out`` when given, so only the result is full size. ``text``: the text stream's projection and norm."""
        proj, norm = self.projection(which, text)

        def heads(tokens: torch.Tensor, *cos_sin: torch.Tensor) -> torch.Tensor:
            y = proj(tokens).unflatten(-1, (self.heads, -1))
            y = y if norm is None else norm(y)
            return apply_rope(y, *cos_sin) if cos_sin else y

        return per_token_chunks(heads, x, *(rope or ()), out=out)

    def projection(self, which: str, text: bool = False) -> Tuple[nn.Module, Optional[nn.Module]]:
        """The Linear and QK norm (None for v) of q, k or v."""
        return getattr(self, f"to_{which}"), getattr(self, f"norm_{which}", None)

    def qkv(self, x: torch.Tensor, rope: Rope):
        """x [B, L, D] -> rotated normed q, k and v, each [B, H, L, d] (views of [B, L, H, d] memory)."""
        q = self.project_heads("q", x, rope).transpose(1, 2)
        k = self.project_heads("k", x, rope).transpose(1, 2)
        return q, k, self.project_heads("v", x, None).transpose(1, 2)


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

    def projection(self, which: str, text: bool = False) -> Tuple[nn.Module, Optional[nn.Module]]:
        if not text:
            return super().projection(which)
        return getattr(self, f"add_{which}_proj"), getattr(self, f"{self.context_norm}_{which}", None)

    def joint_heads(self, which: str, x: torch.Tensor, c: torch.Tensor, rope: Rope) -> torch.Tensor:
        """q, k (rotated) or v of [text; image]: [B, H, Lt+N, d], each stream with its own projection and QK norm,
        written into one [B, Lt+N, H, d] buffer."""
        lt, (cos, sin), rotate = c.shape[1], rope, which != "v"
        joint = x.new_empty(x.shape[0], lt + x.shape[1], self.heads, x.shape[2] // self.heads)
        self.project_heads(which, c, (cos[:, :lt], sin[:, :lt]) if rotate else None, text=True, out=joint[:, :lt])
        self.project_heads(which, x, (cos[:, lt:], sin[:, lt:]) if rotate else None, out=joint[:, lt:])
        return joint.transpose(1, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: JointMask, rope: Rope):
        """x [B, N, D], c [B, Lt, D] -> (x_out [B, N, D], c_out [B, Lt, D] or None)."""
        # one at a time, so each is finished before the next is projected
        q, k, v = (self.joint_heads(which, x, c, rope) for which in ("q", "k", "v"))
        out = attend(q, k, v, mask)  # [B, Lt+N, D]
        del q, k, v  # before the output projections
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
            del x_mod
            return None, residual_mlp(x, x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, self.ff)
        c_mod, *c_chunks = self.norm1_context(c, temb)
        x_attn, c_attn = self.attn(x_mod, c_mod, mask, rope)
        del x_mod, c_mod  # not needed by the feed-forwards: free them first
        c = residual_mlp(c, c_attn, *c_chunks, self.ff_context)
        return c, residual_mlp(x, x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, self.ff)


def residual_mlp(x, attn_out, gate_msa, shift_mlp, scale_mlp, gate_mlp, ff: FeedForward) -> torch.Tensor:
    """x + gate_msa * attn, then + gate_mlp * FF(modulated LN(x)). Chunks are [B, D]; ``attn_out`` is consumed.

    The feed-forward runs over pieces of the tokens, so its 4D hidden layer exists for one piece at a time; the
    gated sums are formed in the buffers they consume (the same roundings as ``x + gate * y``)."""
    x = attn_out.mul_(gate_msa[:, None]).add_(x)
    gate_mlp = gate_mlp[:, None]

    def feed_forward(tokens: torch.Tensor) -> torch.Tensor:
        return ff(modulate(tokens, shift_mlp, scale_mlp)).mul_(gate_mlp).add_(tokens)

    return per_token_chunks(feed_forward, x, out=x)
