"""The multi-clip token sequence: patchify, position ids, the attention mask, unpatchify.

A DiT call sees ``clips`` = [history..., current], each [B, C, t, h, w] in latent pixels; clips may differ in
spatial size. Tokens are 2x2 patches in (t, h, w) raster order, clips concatenated oldest first, and the
attention sequence is [text (Lt tokens); image (N tokens)] (reference §2.1).
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange


def token_grid(clip: torch.Tensor, patch_size: int):
    """(t, h, w) of a clip [B, C, t, ph, pw] in tokens."""
    _, _, t, h, w = clip.shape
    return t, h // patch_size, w // patch_size


def patchify(clip: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, t, h*p, w*p] -> [B, t*h*w, p*p*C], features in (p1, p2, c) order (trap 10)."""
    return rearrange(clip, "b c t (h p1) (w p2) -> b (t h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(tokens: torch.Tensor, grid: Sequence[int], patch_size: int) -> torch.Tensor:
    """[B, t*h*w, p*p*C] -> [B, C, t, h*p, w*p], the inverse of :func:`patchify`."""
    t, h, w = grid
    return rearrange(tokens, "b (t h w) (p1 p2 c) -> b c t (h p1) (w p2)", t=t, h=h, w=w, p1=patch_size, p2=patch_size)


def frame_ids(clips: List[torch.Tensor], patch_size: int) -> torch.Tensor:
    """[N] float32 temporal id of every image token: frames numbered from 0 across the concatenated clips."""
    ids, start = [], 0
    for clip in clips:
        t, h, w = token_grid(clip, patch_size)
        ids.append(torch.arange(start, start + t, dtype=torch.float32).repeat_interleave(h * w))
        start += t
    return torch.cat(ids).to(clips[-1].device)


def interpolated_positions(size: int, full: int) -> torch.Tensor:
    """Token positions of a clip axis of ``size`` tokens on the current clip's ``full``-token axis.

    A smaller history clip gets the 1-D linear resize of arange(full) (0.5, 2.5, ... for half size): the
    centres of the full-resolution blocks it covers (reference §2.3).
    """
    positions = torch.arange(full, dtype=torch.float32)
    if size == full:
        return positions
    return F.interpolate(positions[None, None], size=size, mode="linear", align_corners=False)[0, 0]


def flux_position_ids(clips: List[torch.Tensor], patch_size: int) -> torch.Tensor:
    """[N, 3] float32 (t, h, w) RoPE positions of the image tokens of the miniflux DiT."""
    _, full_h, full_w = token_grid(clips[-1], patch_size)
    hw = []
    for clip in clips:
        t, h, w = token_grid(clip, patch_size)
        rows, cols = interpolated_positions(h, full_h), interpolated_positions(w, full_w)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # [h, w, 2]
        hw.append(grid.reshape(1, h * w, 2).expand(t, -1, -1).reshape(t * h * w, 2))
    hw = torch.cat(hw).to(clips[-1].device)
    return torch.cat([frame_ids(clips, patch_size)[:, None], hw], dim=1)


def with_text_positions(image_positions: torch.Tensor, text_length: int) -> torch.Tensor:
    """Prepend ``text_length`` all-zero rows (text tokens sit at position 0 on every axis): [Lt+N, n]."""
    text = image_positions.new_zeros(text_length, image_positions.shape[1])
    return torch.cat([text, image_positions], dim=0)


def joint_attention_mask(context_mask: torch.Tensor, times: torch.Tensor, temporal_causal: bool = True) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask (True = attend) for the [text; image] sequence (reference §2.1, trap 7).

    context_mask [B, Lt] (1 = real token); times [Lt+N] temporal ids (text at 0). Real tokens attend only to
    real tokens, padded text only to padded text; with ``temporal_causal`` a token also sees only tokens of
    an earlier or equal frame.
    """
    batch = context_mask.shape[0]
    image = torch.ones(batch, times.shape[0] - context_mask.shape[1], dtype=torch.bool, device=context_mask.device)
    real = torch.cat([context_mask.bool(), image], dim=1)  # [B, L]
    mask = real[:, :, None] == real[:, None, :]  # [B, L, L]
    if temporal_causal:
        mask = mask & (times[:, None] >= times[None, :])[None]
    return mask[:, None]
