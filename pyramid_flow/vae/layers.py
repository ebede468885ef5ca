"""Building blocks of the causal video VAE (official ``video_vae/modeling_causal_conv.py``, ``modeling_resnet.py``,
``modeling_block.py``), with an explicit causal cache.

Shapes: B batch, C channels, T frames, H/W height and width. Every video tensor is [B, C, T, H, W], held in the
``channels_last_3d`` layout (physically [B, T, H, W, C]): then every frame is one contiguous block, so the
per-frame GroupNorm, the per-frame attention and oneDNN's 3-D convolutions all work on views, without the
transposing copies that the [B, C, T, H, W] layout needs around each of them.

Causality: each CausalConv3d pads its input with k_t - 1 = 2 zero frames in front, so a frame only sees itself
and the past. To process a long video in temporal chunks, a :class:`CausalCache` carries the last frames of every
conv's padded input from one chunk into the next in place of the zero padding; the chunked result then equals
the one-shot result (official ``CausalVideoVAE.chunk_decode``). ``cache=None`` means one shot.

Precision: GroupNorm and the SiLU after it run in float32 and are cast once to the activation dtype, as under
the official bf16 autocast (under which group_norm runs in float32). GroupNorm weights are therefore stored in
float32 (a few KB).
"""

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..attention import sdpa_attention

NORM_EPS = 1e-6  # every GroupNorm of the VAE (official CausalGroupNorm with eps 1e-6)
LAYOUT = torch.channels_last_3d


def frames_last(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, T, H, W] in the VAE's layout (a copy only if it is not in it yet)."""
    return x.contiguous(memory_format=LAYOUT)


def zeros_like_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` zero frames [B, C, frames, H, W] shaped and laid out like x."""
    b, c, _, h, w = x.shape
    return torch.empty((b, c, frames, h, w), dtype=x.dtype, device=x.device, memory_format=LAYOUT).zero_()


def per_frame_view(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] channels_last_3d -> [(B T), C, H, W] channels_last, the same memory."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def from_frames(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`per_frame_view`."""
    bt, c, h, w = frames.shape
    return frames.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


class CausalCache:
    """The causal context of one video stream (one tile), carried from a temporal chunk to the next.

    A new cache stands for the first chunk (the official ``is_init_image=True``: zero padding in front, and the
    temporal upsamplers drop their first output frame). After each chunk the caller sets ``first_chunk`` to
    False. Several caches can coexist, e.g. one per spatial tile.
    """

    def __init__(self):
        self.frames: Dict[nn.Module, torch.Tensor] = {}  # conv -> last frames of its padded input [B, C, n, H, W]
        self.first_chunk = True

    def to(self, device: torch.device) -> "CausalCache":
        """Move the cached frames (e.g. parked on the CPU between the chunks of a tile)."""
        self.frames = {conv: frames.to(device) for conv, frames in self.frames.items()}
        return self


def is_first_chunk(cache: Optional[CausalCache]) -> bool:
    return cache is None or cache.first_chunk


FRAME_PIECE = 2  # frames per piece of frame-local work inside a chunk (see per_frame_pieces)


def per_frame_pieces(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` over pieces of FRAME_PIECE frames of x [B, C, T, H, W], in order, the outputs written one after the
    other into one buffer in the VAE layout (``fn`` may return r frames per input frame).

    For work that is per frame (GroupNorm, depth-to-space) or causal with its context in a :class:`CausalCache`
    (the convolutions, which pad each piece with the last frames of the one before): the same values as one pass,
    with the temporaries of one piece instead of the whole chunk's."""
    frames = x.shape[2]
    if frames <= FRAME_PIECE:
        return fn(x)
    out, written = None, 0
    for start in range(0, frames, FRAME_PIECE):
        piece = fn(x[:, :, start : start + FRAME_PIECE])
        if out is None:
            b, c, n, h, w = piece.shape
            total = frames * n // min(FRAME_PIECE, frames)
            out = torch.empty((b, c, total, h, w), dtype=piece.dtype, device=piece.device, memory_format=LAYOUT)
        out[:, :, written : written + piece.shape[2]] = piece
        written += piece.shape[2]
    return out


def norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SiLU(GroupNorm(x)) of every frame on its own (official ``modeling_causal_conv.py: CausalGroupNorm``).

    x [B, C, T, H, W] -> same shape, dtype and layout; statistics per (batch, frame, group), computed in float32.
    """
    frames = F.silu(norm(per_frame_view(x).float()), inplace=True)  # [(B T), C, H, W], channels_last
    return from_frames(frames.to(x.dtype), x.shape[0])


class CausalConv3d(nn.Module):
    """Conv3d (cubic kernel k) after k - 1 frames of causal padding; k // 2 zero pixels of spatial padding.

    The first chunk (or a one-shot call) is padded with zero frames. A later chunk is preceded by the cached
    frames instead: 2 for a stride-1 conv, 1 for the stride-2 temporal downsampler, as the official cache does
    (official ``CausalConv3d.forward`` with ``temporal_chunk``). The spatial padding is the convolution's own, so
    only the few front frames are copied in.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, bias: bool = True,
                 dtype=None, device=None, operations=None):
        super().__init__()
        stride = (stride, 1, 1) if isinstance(stride, int) else tuple(stride)
        self.time_pad = kernel_size - 1
        self.context_frames = self.time_pad - (stride[0] - 1)  # frames taken from the cache on a later chunk
        space_pad = kernel_size // 2
        self.conv = operations.Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                                      padding=(0, space_pad, space_pad), bias=bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None,
                out_channels: slice = slice(None)) -> torch.Tensor:
        """x [B, C_in, T, H, W] -> [B, C_out, T', H', W'], or only the ``out_channels`` of C_out. With a cache, the
        first call of a stream pads with zeros and every later call (a later chunk, or a later piece of the same
        chunk) with the cached frames."""
        first = cache is None or self not in cache.frames
        if first and x.shape[2] == 1 and self.time_pad:
            out = self.last_tap(x, out_channels)
            if out is not None:
                if cache is not None and self.context_frames:  # what the padded input [0, 0, x] would leave
                    cache.frames[self] = torch.cat([zeros_like_frames(x, self.context_frames - 1), x], dim=2)
                return out
        front = self.time_pad if first else self.context_frames
        if front:
            x = torch.cat([zeros_like_frames(x, front) if first else cache.frames[self], x], dim=2)
        if cache is not None and self.context_frames:
            cache.frames[self] = x[:, :, -self.context_frames :].clone()  # a copy, so the chunk can be freed
        out = self.conv(x)
        return out if out_channels == slice(None) else frames_last(out[:, out_channels])

    def last_tap(self, x: torch.Tensor, out_channels: slice = slice(None)) -> Optional[torch.Tensor]:
        """The first call on one frame x [B, C_in, 1, H, W]: its padded input [0, 0, x] meets every temporal tap
        but the last with zeros, so the conv is the last tap's 2-D conv, a third of the work and without the
        padded copy (the same sum less its zero terms: equal up to float rounding). This is all the VAE does on a
        single image (text-to-image, the image of image-to-video encoded) and of any one-frame first chunk.
        None when the layer's weight is not used as stored (ComfyUI casting or moving it per call)."""
        conv = self.conv
        weight = conv.weight
        patched = any(getattr(conv, name, None) for name in ("comfy_cast_weights", "weight_function", "bias_function"))
        if patched or type(weight) is not torch.nn.Parameter or weight.device != x.device or weight.dtype != x.dtype:
            return None
        bias = None if conv.bias is None else conv.bias[out_channels]
        return ops.conv3d(x, weight[out_channels, :, -1:], bias, (1, *conv.stride[1:]), conv.padding)


class CausalResnetBlock3D(nn.Module):
    """(GroupNorm, SiLU, conv 3³) twice plus a shortcut (a 1³ conv when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dtype=None, device=None, operations=None):
        super().__init__()
        conv = dict(dtype=dtype, device=device, operations=operations)
        self.norm1 = operations.GroupNorm(groups, in_channels, eps=NORM_EPS, dtype=torch.float32, device=device)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, **conv)
        self.norm2 = operations.GroupNorm(groups, out_channels, eps=NORM_EPS, dtype=torch.float32, device=device)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, **conv)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1, **conv) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        """Norm and conv run over pieces of frames (the normed input and the conv's padded copy exist for one
        piece at a time); a one-shot call gets a cache of its own to carry the convs' context between pieces."""
        cache = CausalCache() if cache is None else cache
        h = per_frame_pieces(lambda frames: self.conv1(norm_silu(self.norm1, frames), cache), x)
        h = per_frame_pieces(lambda frames: self.conv2(norm_silu(self.norm2, frames), cache), h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x, cache)
        return h.add_(x)  # x + h


class CausalDownsample(nn.Module):
    """A 3³ causal conv with stride (1, 2, 2) (spatial) or (2, 1, 1) (temporal: T -> (T - 1) // 2 + 1)."""

    def __init__(self, channels: int, stride, dtype=None, device=None, operations=None):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=stride, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        return self.conv(x, cache)


class CausalUpsample(nn.Module):
    """A 3³ causal conv to 4C (spatial) or 2C (temporal) channels, then depth-to-space.

    Channels split as (c, pt, ph, pw); frames interleave as (t, pt). A temporal upsample maps T -> 2T, and drops
    its first output frame on the first chunk, so T latent frames grow to 2T - 1 (official
    ``CausalTemporalUpsample2x`` with ``is_init_image``).
    """

    def __init__(self, channels: int, temporal: bool, dtype=None, device=None, operations=None):
        super().__init__()
        self.factors = (2, 1, 1) if temporal else (1, 2, 2)  # (pt, ph, pw)
        out_channels = channels * self.factors[0] * self.factors[1] * self.factors[2]
        self.conv = CausalConv3d(channels, out_channels, 3, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        drop_first = self.factors[0] > 1 and is_first_chunk(cache)
        cache = CausalCache() if cache is None else cache
        if drop_first and x.shape[2] == 1:  # one frame in, its second output frame out: only the pt = 1 channels
            return self.conv(x, cache, out_channels=slice(1, None, 2))
        x = per_frame_pieces(lambda frames: self.depth_to_space(self.conv(frames, cache)), x)
        return x[:, :, 1:] if drop_first else x

    def depth_to_space(self, y: torch.Tensor) -> torch.Tensor:
        """[B, C pt ph pw, T, H, W] (physically [B, T, H, W, (c pt ph pw)]) -> [B, C, T pt, H ph, W pw]."""
        pt, ph, pw = self.factors
        b, _, t, h, w = y.shape
        y = y.permute(0, 2, 3, 4, 1).reshape(b, t, h, w, -1, pt, ph, pw)
        y = y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * pt, h * ph, w * pw, -1)  # the one copy
        return y.permute(0, 4, 1, 2, 3)  # channels_last_3d


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame, with a residual (diffusers ``Attention`` as
    built by the official mid block: GroupNorm on the input, q/k/v/out Linear with bias, scale C^-1/2)."""

    def __init__(self, channels: int, groups: int, dtype=None, device=None, operations=None):
        super().__init__()
        linear = dict(dtype=dtype, device=device)
        self.group_norm = operations.GroupNorm(groups, channels, eps=NORM_EPS, dtype=torch.float32, device=device)
        self.to_q = operations.Linear(channels, channels, **linear)
        self.to_k = operations.Linear(channels, channels, **linear)
        self.to_v = operations.Linear(channels, channels, **linear)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels, **linear)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T, H, W] -> same."""
        b, c, t, h, w = x.shape
        frames = per_frame_view(x)  # [(B T), C, H, W] channels_last: physically [(B T), H, W, C]
        normed = self.group_norm(frames.float()).to(x.dtype).permute(0, 2, 3, 1).reshape(b * t, h * w, c)
        q, k, v = (proj(normed).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # [(B T), 1, L, C]
        out = self.to_out[0](sdpa_attention(q, k, v).squeeze(1))  # [(B T), L, C]
        out = out + frames.permute(0, 2, 3, 1).reshape(b * t, h * w, c)  # the residual, the same layout
        return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # [B, C, T, H, W], channels_last_3d


class CausalUNetMidBlock2D(nn.Module):
    """resnet -> per-frame attention -> resnet, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, dtype=None, device=None, operations=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.resnets = nn.ModuleList([CausalResnetBlock3D(channels, channels, groups, **kw) for _ in range(2)])
        self.attentions = nn.ModuleList([FrameAttention(channels, groups, **kw)])

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class _CausalBlock(nn.Module):
    """Resnets, then a spatial and a temporal resampler (each optional), in that order."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, dtype=None, device=None,
                 operations=None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, dtype=dtype,
                                 device=device, operations=operations)
             for i in range(num_layers)]
        )

    def resamplers(self):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        for resampler in self.resamplers():
            if resampler is not None:
                x = resampler[0](x, cache)
        return x


class DownEncoderBlockCausal3D(_CausalBlock):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, spatial_down: bool,
                 temporal_down: bool, dtype=None, device=None, operations=None):
        kw = dict(dtype=dtype, device=device, operations=operations)
        super().__init__(in_channels, out_channels, num_layers, groups, **kw)
        self.downsamplers = nn.ModuleList([CausalDownsample(out_channels, (1, 2, 2), **kw)]) if spatial_down else None
        self.temporal_downsamplers = (
            nn.ModuleList([CausalDownsample(out_channels, (2, 1, 1), **kw)]) if temporal_down else None
        )

    def resamplers(self):
        return self.downsamplers, self.temporal_downsamplers


class UpDecoderBlockCausal3D(_CausalBlock):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, spatial_up: bool,
                 temporal_up: bool, dtype=None, device=None, operations=None):
        kw = dict(dtype=dtype, device=device, operations=operations)
        super().__init__(in_channels, out_channels, num_layers, groups, **kw)
        self.upsamplers = nn.ModuleList([CausalUpsample(out_channels, temporal=False, **kw)]) if spatial_up else None
        self.temporal_upsamplers = (
            nn.ModuleList([CausalUpsample(out_channels, temporal=True, **kw)]) if temporal_up else None
        )

    def resamplers(self):
        return self.upsamplers, self.temporal_upsamplers
