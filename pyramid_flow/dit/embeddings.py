"""Embeddings of the Pyramid Flow DiTs: timestep sinusoid, text projections, SD3 sincos table, RoPE.

Shapes: B batch, L tokens, D model width, H heads, d head dim, n position axes.
"""

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_sinusoid(timestep: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[B] timesteps on the 0-1000 scale -> [B, dim] float32, ordered [cos | sin] (official
    ``get_timestep_embedding`` with flip_sin_to_cos and shift 0)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device)
    freqs = torch.exp(exponent / half)  # [half], shift 0
    args = timestep.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear; the checkpoint names are ``linear_1`` and ``linear_2``."""

    def __init__(self, in_dim: int, dim: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, dim, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(dim, dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepTextEmbedding(nn.Module):
    """temb = MLP(sinusoid(t)) + MLP(pooled text); the checkpoint's ``time_text_embed``."""

    def __init__(self, dim: int, pooled_projection_dim: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim, dtype=dtype, device=device, operations=operations)
        self.text_embedder = MLPEmbedder(pooled_projection_dim, dim, dtype=dtype, device=device, operations=operations)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """timestep [B], pooled [B, P] -> [B, D] in the dtype of ``pooled``."""
        t_emb = timestep_sinusoid(timestep).to(pooled.dtype)  # [B, 256], fp32 sinusoid then cast
        return self.timestep_embedder(t_emb) + self.text_embedder(pooled)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] float64 as [sin | cos] with omega_k = 10000^(-k / (dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    angles = positions.double()[:, None] * omega[None]  # [M, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_table(dim: int, grid_size: int, base_size: int) -> torch.Tensor:
    """The SD3 spatial table ``pos_embed.pos_embed``: [1, grid*grid, dim] float32 (official
    ``mmdit_modules/modeling_embedding.py: get_2d_sincos_pos_embed``).

    Coordinates are arange(grid) / (grid / base_size) in float32; the first dim/2 channels encode the
    w coordinate and the last dim/2 the h coordinate (row-major h, w token order).
    """
    coords = torch.arange(grid_size, dtype=torch.float32) / (grid_size / base_size)  # [grid]
    h, w = torch.meshgrid(coords, coords, indexing="ij")  # [grid, grid] each
    table = torch.cat([sincos_1d(dim // 2, w.reshape(-1)), sincos_1d(dim // 2, h.reshape(-1))], dim=1)
    return table.float().unsqueeze(0)


def crop_sincos(table: torch.Tensor, grid_size: int, size: Tuple[int, int], crop: Tuple[int, int]) -> torch.Tensor:
    """Center crop ``crop`` (h, w tokens) of the [1, grid*grid, D] table, resized to ``size`` if smaller.

    Returns [1, h*w, D] float32. The crop follows the current clip; history clips get the bilinear
    resize of that crop (``interp_condition_pos``; official ``PatchEmbed3D.cropped_pos_embed``).
    """
    top, left = (grid_size - crop[0]) // 2, (grid_size - crop[1]) // 2
    grid = table.reshape(1, grid_size, grid_size, -1)  # [1, grid, grid, D]
    grid = grid[:, top : top + crop[0], left : left + crop[1]].float()  # [1, ch, cw, D]; only the crop upcast
    if tuple(size) != tuple(crop):
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        grid = grid.permute(0, 2, 3, 1)  # [1, h, w, D]
    return grid.reshape(1, -1, grid.shape[-1])


def rope_cos_sin(positions: torch.Tensor, axes_dims: Sequence[int], theta: float = 10000.0):
    """[L, n] positions -> (cos, sin), each [1, L, sum(axes_dims)/2] float32 (official ``modeling_pyramid_flux.py: rope``).

    Axis i fills ``axes_dims[i] / 2`` consecutive rotation pairs. Angles are formed in float64, as the
    official einsum promotes them, and only cos/sin are rounded to float32.
    """
    angles = []
    for axis, dim in enumerate(axes_dims):
        omega = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
        angles.append(positions[:, axis].double()[:, None] * omega[None])  # [L, dim/2]
    angles = torch.cat(angles, dim=-1)
    return torch.cos(angles).float()[None], torch.sin(angles).float()[None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2k], x[2k+1]) of token-major x [B, L, H, d] in float32; cos/sin [1, L, d/2]."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, H, d/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, :, None], sin[:, :, None]  # [1, L, 1, d/2]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.flatten(-2).to(x.dtype)
