"""The multi-clip token sequence: patchify, position ids, the attention mask, unpatchify.

A DiT call sees ``clips`` = [history..., current], each [B, C, t, h, w] in latent pixels; clips may differ in
spatial size. Tokens are 2x2 patches in (t, h, w) raster order, clips concatenated oldest first, and the
attention sequence is [text (Lt tokens); image (N tokens)] (official ``merge_input`` of both DiTs).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from ..attention import SDPA, AttentionBackend


def token_grid(clip: torch.Tensor, patch_size: int):
    """(t, h, w) of a clip [B, C, t, ph, pw] in tokens."""
    _, _, t, h, w = clip.shape
    return t, h // patch_size, w // patch_size


def patchify(clip: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, t, h*p, w*p] -> [B, t*h*w, p*p*C], features in (p1, p2, c) order (the official order; diffusers' Flux
    packs (c, p1, p2))."""
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
    centres of the full-resolution blocks it covers (official ``PyramidFluxTransformer._prepare_pyramid_image_ids``).
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


@dataclass
class JointMask:
    """The attention pattern of the [text; image] sequence without an L x L tensor.

    Tokens are sorted by temporal id (text at 0, then frames in order) and a token attends to every token of an
    earlier or equal frame, so the queries of one frame attend to a prefix of the sequence: ``segments`` holds
    (query start, query end = key end) per frame. Padded text (the end of each row's ``text_tokens``, after its
    ``text_lengths[b]`` real ones) is hidden from every query, by ``key_mask`` [B, 1, 1, L] (True = real token)
    or, for attention backends that take no mask, by leaving those keys out of the call. Padded text queries get
    the same keys as real ones (the official pattern gives them only the padded keys); their values reach no real
    token, since no real query attends to them, so every output of an image token is unchanged.
    """

    key_mask: torch.Tensor
    segments: List[Tuple[int, int]]
    text_tokens: int
    text_lengths: List[int]
    attention: AttentionBackend = SDPA  # the kernel of this call's attention
    split: Optional["SequenceSplit"] = None  # noqa: F821 (dit.sequence_parallel): image tokens spread over ranks

    @property
    def padded(self) -> bool:
        return any(n < self.text_tokens for n in self.text_lengths)


def joint_attention_mask(context_mask: torch.Tensor, times: torch.Tensor, temporal_causal: bool = True,
                         attention: AttentionBackend = SDPA, split=None) -> JointMask:
    """context_mask [B, Lt] (1 = real token, real tokens first); times [Lt+N] non-decreasing temporal ids (text at
    0) of the whole sequence; ``attention``: the kernel the call's attention runs on; ``split``: the call's
    :class:`~pyramid_flow.dit.sequence_parallel.SequenceSplit` under sequence parallel."""
    batch, text_tokens, length = context_mask.shape[0], context_mask.shape[1], times.shape[0]
    image = torch.ones(batch, length - text_tokens, dtype=torch.bool, device=context_mask.device)
    key_mask = torch.cat([context_mask.bool(), image], dim=1)[:, None, None]  # [B, 1, 1, L]
    text_lengths = context_mask.sum(dim=1).tolist()
    if not temporal_causal:
        return JointMask(key_mask, [(0, length)], text_tokens, text_lengths, attention, split)
    ends = torch.unique_consecutive(times, return_counts=True)[1].cumsum(0).tolist()
    return JointMask(key_mask, list(zip([0] + ends[:-1], ends)), text_tokens, text_lengths, attention, split)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: JointMask,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q, k, v [B, H, L, d] -> [B, H, L, d]: each frame's queries against the keys of its prefix.

    Without padded text no mask is needed. Otherwise the key mask hides the padding; a backend that takes no
    mask is called per batch row instead, with that row's padded text keys left out. Each call's output is
    written into ``out`` (no list of pieces and their concatenation); ``out`` may be ``q`` itself, since a
    frame's queries are read once, before its output is written. By default a new [B, H, L, d] view of
    [B, L, H, d] memory, so merging the heads afterwards (``transpose(1, 2).flatten(2)``) copies nothing.
    """
    if out is None:
        out = q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1]).transpose(1, 2)
    attention = mask.attention
    if not mask.padded:
        _prefix_attention(attention, q, k, v, mask.segments, out)
    elif attention.supports_mask:
        for start, end in mask.segments:
            out[:, :, start:end] = attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], mask.key_mask[..., :end])
    else:
        for b, real in enumerate(mask.text_lengths):
            keep = torch.cat([torch.arange(real), torch.arange(mask.text_tokens, k.shape[2])]).to(k.device)
            segments = [(start, end - (mask.text_tokens - real)) for start, end in mask.segments]  # ends in kept keys
            _prefix_attention(attention, q[b : b + 1], k[b : b + 1, :, keep], v[b : b + 1, :, keep], segments,
                              out[b : b + 1], queries=mask.segments)
    return out


def _prefix_attention(attention: AttentionBackend, q, k, v, key_segments, out: torch.Tensor, queries=None) -> None:
    """Mask-free, into ``out``: the queries of each segment (``queries``, default the segments) against
    keys[:segment end]."""
    for (qs, qe), (_, ke) in zip(queries or key_segments, key_segments):
        out[:, :, qs:qe] = attention(q[:, :, qs:qe], k[:, :, :ke], v[:, :, :ke])
