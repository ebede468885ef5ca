"""The Pyramid Flow causal video VAE: encoder, decoder, chunked and tiled encode/decode (official
``video_vae/modeling_causal_vae.py: CausalVideoVAE``).

Shapes: B batch, T pixel frames, H/W pixel height and width; latents are [B, 16, T', H/8, W/8] with
T = 8 (T' - 1) + 1: the first frame is compressed on its own, each causal stride-2 conv maps T -> (T - 1) // 2 + 1.
"""

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .. import ops
from .layers import (
    NORM_EPS,
    CausalCache,
    CausalConv3d,
    CausalUNetMidBlock2D,
    DownEncoderBlockCausal3D,
    UpDecoderBlockCausal3D,
    frames_last,
    norm_silu,
)
from .streaming import Progress, ProgressCounter, cat_frames, gather_frames, stream, temporal_chunks
from .tiling import TileAssembler, TileGrid, TileShare, tile_grid


@dataclass(frozen=True)
class DecodeSettings:
    """A decode preset: the temporal window in latent frames and the spatial tile in pixels (None: untiled)."""

    window_size: int
    tile_sample_min_size: Optional[int]


# The official decode_latent presets: save_memory=True (the default) and save_memory=False.
SAVE_MEMORY_DECODE = DecodeSettings(window_size=1, tile_sample_min_size=256)
FAST_DECODE = DecodeSettings(window_size=2, tile_sample_min_size=512)
ENCODE_TILE = 256  # the official VAE's tile when tiling is enabled (image-to-video encodes with it)


def halve(size: int) -> int:
    """Output length of a 3-wide stride-2 conv padded by 1 (spatial) or causally by 2 (temporal)."""
    return (size - 1) // 2 + 1


class CausalVaeEncoder(nn.Module):
    """conv_in -> down blocks -> mid block -> GroupNorm, SiLU -> conv_out (2 * latent channels: mean, logvar)."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: Sequence[int], spatial_down_sample: Sequence[bool],
                 temporal_down_sample: Sequence[bool], norm_num_groups: int, dtype=None, device=None, operations=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], 3, **kw)
        self.down_blocks = nn.ModuleList(
            [DownEncoderBlockCausal3D(block_out_channels[max(i - 1, 0)], channels, layers_per_block[i], norm_num_groups,
                                      spatial_down_sample[i], temporal_down_sample[i], **kw)
             for i, channels in enumerate(block_out_channels)]
        )
        self.mid_block = CausalUNetMidBlock2D(block_out_channels[-1], norm_num_groups, **kw)
        self.conv_norm_out = operations.GroupNorm(norm_num_groups, block_out_channels[-1], eps=NORM_EPS,
                                                  dtype=torch.float32, device=device)
        self.conv_out = CausalConv3d(block_out_channels[-1], 2 * out_channels, 3, **kw)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        """x [B, 3, T, H, W] -> [B, 2 * latent, T', H/8, W/8]."""
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(norm_silu(self.conv_norm_out, x), cache)


class CausalVaeDecoder(nn.Module):
    """conv_in -> mid block -> up blocks (channels reversed) -> GroupNorm, SiLU -> conv_out."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: Sequence[int], spatial_up_sample: Sequence[bool], temporal_up_sample: Sequence[bool],
                 norm_num_groups: int, dtype=None, device=None, operations=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        channels = list(reversed(block_out_channels))
        self.conv_in = CausalConv3d(in_channels, channels[0], 3, **kw)
        self.mid_block = CausalUNetMidBlock2D(channels[0], norm_num_groups, **kw)
        self.up_blocks = nn.ModuleList(
            [UpDecoderBlockCausal3D(channels[max(i - 1, 0)], out, layers_per_block[i], norm_num_groups,
                                    spatial_up_sample[i], temporal_up_sample[i], **kw)
             for i, out in enumerate(channels)]
        )
        self.conv_norm_out = operations.GroupNorm(norm_num_groups, channels[-1], eps=NORM_EPS, dtype=torch.float32,
                                                  device=device)
        self.conv_out = CausalConv3d(channels[-1], out_channels, 3, **kw)

    def forward(self, z: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        """z [B, latent, T', h, w] -> [B, 3, 8 T' - 7, 8 h, 8 w] (8 T' on a later chunk)."""
        x = self.mid_block(self.conv_in(z, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(norm_silu(self.conv_norm_out, x), cache)


class CausalVideoVAE(nn.Module):
    """The causal video VAE of Pyramid Flow: 8x spatial and 8x temporal compression, 16 latent channels.

    The constructor takes the official ``config.json`` keys (other keys are ignored):

    - encoder_in_channels (3), encoder_out_channels (16, latent channels), encoder_block_out_channels
      ([128, 256, 512, 512]), encoder_layers_per_block ([2, 2, 2, 2]), encoder_spatial_down_sample and
      encoder_temporal_down_sample ([T, T, T, F]), encoder_norm_num_groups (32);
    - decoder_in_channels (16), decoder_out_channels (3), decoder_block_out_channels, decoder_layers_per_block
      ([3, 3, 3, 3]), decoder_spatial_up_sample and decoder_temporal_up_sample ([T, T, T, F]),
      decoder_norm_num_groups (32);
    - downsample_scale (8): used by the tiling arithmetic, as in the official code;
    - encoder/decoder block types must be the causal ones and ``interpolate`` False (the only ones that exist).

    ``inert_config_keys`` lists the official keys without effect at inference; any other key is reported on
    loading.
    """

    inert_config_keys = frozenset({"_class_name", "_diffusers_version", "add_post_quant_conv", "decoder_act_fn",
                                   "decoder_block_dropout", "decoder_type", "encoder_act_fn", "encoder_block_dropout",
                                   "encoder_double_z", "encoder_type", "sample_size", "scaling_factor"})

    def __init__(
        self,
        encoder_in_channels: int = 3,
        encoder_out_channels: int = 16,
        encoder_layers_per_block: Sequence[int] = (2, 2, 2, 2),
        encoder_down_block_types: Sequence[str] = ("DownEncoderBlockCausal3D",) * 4,
        encoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        encoder_spatial_down_sample: Sequence[bool] = (True, True, True, False),
        encoder_temporal_down_sample: Sequence[bool] = (True, True, True, False),
        encoder_norm_num_groups: int = 32,
        decoder_in_channels: int = 16,
        decoder_out_channels: int = 3,
        decoder_layers_per_block: Sequence[int] = (3, 3, 3, 3),
        decoder_up_block_types: Sequence[str] = ("UpDecoderBlockCausal3D",) * 4,
        decoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        decoder_spatial_up_sample: Sequence[bool] = (True, True, True, False),
        decoder_temporal_up_sample: Sequence[bool] = (True, True, True, False),
        decoder_norm_num_groups: int = 32,
        interpolate: bool = False,
        downsample_scale: int = 8,
        dtype=None,
        device=None,
        operations=None,
        **ignored,  # config.json keys without effect at inference (act fns, dropout, sample_size, scaling_factor, ...)
    ):
        super().__init__()
        operations = operations or ops
        _check_config("encoder", encoder_down_block_types, "DownEncoderBlockCausal3D", encoder_block_out_channels,
                      encoder_norm_num_groups, encoder_layers_per_block, encoder_spatial_down_sample,
                      encoder_temporal_down_sample)
        _check_config("decoder", decoder_up_block_types, "UpDecoderBlockCausal3D", decoder_block_out_channels,
                      decoder_norm_num_groups, decoder_layers_per_block, decoder_spatial_up_sample,
                      decoder_temporal_up_sample)
        if interpolate:
            raise ValueError("interpolate=True upsampling is not implemented by the official VAE either; use False.")
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.encoder = CausalVaeEncoder(encoder_in_channels, encoder_out_channels, encoder_block_out_channels,
                                        encoder_layers_per_block, encoder_spatial_down_sample,
                                        encoder_temporal_down_sample, encoder_norm_num_groups, **kw)
        self.decoder = CausalVaeDecoder(decoder_in_channels, decoder_out_channels, decoder_block_out_channels,
                                        decoder_layers_per_block, decoder_spatial_up_sample, decoder_temporal_up_sample,
                                        decoder_norm_num_groups, **kw)
        latent2 = 2 * encoder_out_channels
        self.quant_conv = CausalConv3d(latent2, latent2, 1, **kw)
        self.post_quant_conv = CausalConv3d(encoder_out_channels, encoder_out_channels, 1, **kw)
        self.latent_channels = encoder_out_channels
        self.downsample_scale = downsample_scale
        self.spatial_downs = sum(map(bool, encoder_spatial_down_sample))
        self.temporal_downs = sum(map(bool, encoder_temporal_down_sample))
        self.spatial_ups = sum(map(bool, decoder_spatial_up_sample))
        self.temporal_ups = sum(map(bool, decoder_temporal_up_sample))

    # --- sizes -------------------------------------------------------------------------------------------------

    def encoded_size(self, pixels: int) -> int:
        for _ in range(self.spatial_downs):
            pixels = halve(pixels)
        return pixels

    def decoded_size(self, latents: int) -> int:
        return latents << self.spatial_ups

    def decoded_frames(self, latent_frames: int) -> int:
        """8 T' - 7: each temporal upsample maps T -> 2T - 1."""
        return ((latent_frames - 1) << self.temporal_ups) + 1

    @property
    def temporal_scale(self) -> int:
        """Video frames per latent frame after the first (8)."""
        return 1 << self.temporal_downs

    # --- encode ------------------------------------------------------------------------------------------------

    def _encode_run(self, x: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
        return self.quant_conv(self.encoder(frames_last(x), cache), cache)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, temporal_chunk: bool = False, window_size: int = 2,
               tile_sample_min_size: Optional[int] = None, tile_overlap: float = 0.25,
               callback: Progress = None) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> moments [B, 2 * latent, T', H/8, W/8] (mean ‖ logvar, unclamped).

        temporal_chunk / window_size: encode window_size latent frames (8 x as many video frames) at a time after
        a first chunk of window_size + 1 latent frames, carrying the causal cache (the official default, 16 video
        frames, is window_size 2; same result up to float rounding, less memory). tile_sample_min_size: None for
        no spatial tiling; otherwise tiles of that many pixels when H or W exceeds it (official default 256;
        changes the result: GroupNorm statistics depend on the tile). callback(done, total) runs after each encoded
        piece.
        """
        if video.dim() != 5:
            raise ValueError(f"video must be [B, 3, T, H, W]; got shape {tuple(video.shape)}.")
        window = self._window(temporal_chunk, window_size)
        if window is not None:
            if (video.shape[2] - 1) % self.temporal_scale:
                raise ValueError(f"Chunked encode needs 1 + {self.temporal_scale}k frames; got {video.shape[2]}.")
            window *= self.temporal_scale  # in video frames
        grid = self._tile_grid(video, tile_sample_min_size, tile_overlap, encode=True)
        progress = ProgressCounter(callback, self._piece_count(video.shape[2], window, grid))
        if grid is None:
            return cat_frames(progress.track(stream(self._encode_run, video, window)))
        assembler = TileAssembler(grid)
        for i, j, tile in grid.tiles(video):
            assembler.add(i, j, cat_frames(progress.track(stream(self._encode_run, tile, window))))
        return assembler.output

    # --- decode ------------------------------------------------------------------------------------------------

    def _decode_run(self, z: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(frames_last(z), cache), cache)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, temporal_chunk: bool = False, window_size: int = 2,
               tile_sample_min_size: Optional[int] = None, tile_overlap: float = 0.25,
               callback: Progress = None, output_device: Optional[torch.device] = None) -> torch.Tensor:
        """latent [B, 16, T', h, w] -> video [B, 3, 8 T' - 7, 8 h, 8 w], nominally in [-1, 1] (not clamped).

        temporal_chunk / window_size: decode window_size latent frames at a time after a first chunk of
        window_size + 1, carrying the causal cache (same result up to float rounding). tile_sample_min_size:
        None for no spatial tiling; otherwise tiles of that many pixels when 8h or 8w exceeds it (official
        save_memory: 256 with window 1; 512 with window 2). callback(done, total) runs after each decoded
        piece (one temporal chunk of one tile) and may raise to interrupt. output_device: where the video is
        assembled (default: the latent's device); e.g. the CPU, so that a GPU holds one chunk or tile at a time.
        """
        window, grid = self._decode_plan(latent, temporal_chunk, window_size, tile_sample_min_size, tile_overlap)
        progress = ProgressCounter(callback, self._piece_count(latent.shape[2], window, grid))
        frames = self.decoded_frames(latent.shape[2])
        if grid is None:
            return gather_frames(progress.track(stream(self._decode_run, latent, window)), frames, output_device)
        # Tile by tile over all frames (the official order): one tile's cache and frames live at a time.
        assembler = TileAssembler(grid, output_device)
        for i, j, tile in grid.tiles(latent):
            assembler.add(i, j, gather_frames(progress.track(stream(self._decode_run, tile, window)), frames))
        return assembler.output

    @torch.no_grad()
    def iter_decode(self, latent: torch.Tensor, window_size: int = 2, tile_sample_min_size: Optional[int] = None,
                    tile_overlap: float = 0.25, callback: Progress = None,
                    cache_device: Optional[torch.device] = None,
                    share: Optional[TileShare] = None) -> Iterator[torch.Tensor]:
        """Decode chunk by chunk, yielding video pieces [B, 3, n, 8 h, 8 w] in frame order.

        The pieces, concatenated, equal ``decode(latent, temporal_chunk=True, window_size=...,
        tile_sample_min_size=..., tile_overlap=...)``; memory holds one chunk of frames plus every tile's causal
        cache (:func:`pyramid_flow.memory.stream_cache_memory`), so a video of any length can be written out as it decodes.
        ``cache_device``: park each tile's cache there (e.g. the CPU) between its chunks, when the caches of all
        tiles do not fit beside the decode; it costs a copy of the cache each way per chunk.
        ``share``: the tiles spread over processes; every process iterates, the gathering one alone yields (the
        same pieces as one process decoding every tile). Untiled, the gathering process decodes alone.
        """
        window, grid = self._decode_plan(latent, True, window_size, tile_sample_min_size, tile_overlap)
        if grid is None:
            if share is None or share.owns(0):
                progress = ProgressCounter(callback, self._piece_count(latent.shape[2], window, grid))
                yield from progress.track(stream(self._decode_run, latent, window))
            return
        mine = [(i, j, tile) for k, (i, j, tile) in enumerate(grid.tiles(latent)) if share is None or share.owns(k)]
        progress = ProgressCounter(callback, len(temporal_chunks(latent.shape[2], window)) * len(mine))
        streams = [(i, j, progress.track(stream(self._decode_run, tile, window, cache_device))) for i, j, tile in mine]
        for _ in temporal_chunks(latent.shape[2], window):
            pieces = {(i, j): next(tile_pieces) for i, j, tile_pieces in streams}
            if share is not None:
                pieces = share.gather(pieces)
                if pieces is None:
                    continue
            assembler = TileAssembler(grid)
            for i, j in sorted(pieces):  # raster order, the order of the official blend
                assembler.add(i, j, pieces[(i, j)])
            yield assembler.output

    def _decode_plan(self, latent, temporal_chunk, window_size, tile_sample_min_size, tile_overlap):
        if latent.dim() != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be [B, {self.latent_channels}, T, h, w]; got shape {tuple(latent.shape)}.")
        grid = self._tile_grid(latent, tile_sample_min_size, tile_overlap, encode=False)
        return self._window(temporal_chunk, window_size), grid

    def _tile_grid(self, x: torch.Tensor, tile_sample_min_size: Optional[int], tile_overlap: float,
                   encode: bool) -> Optional[TileGrid]:
        """The official tiles of x (pixels to encode, latents to decode), or None without tiling."""
        if tile_sample_min_size is None:
            return None
        pixels, latents = tile_sample_min_size, int(tile_sample_min_size / self.downsample_scale)
        if encode:
            return tile_grid(*x.shape[3:], pixels, latents, tile_overlap, self.encoded_size)
        return tile_grid(*x.shape[3:], latents, pixels, tile_overlap, self.decoded_size)

    @staticmethod
    def _window(temporal_chunk: bool, window_size: int) -> Optional[int]:
        if not temporal_chunk:
            return None
        if window_size < 1:
            raise ValueError(f"window_size {window_size} must be at least 1 (latent frames per chunk).")
        return window_size

    @staticmethod
    def _piece_count(frames: int, window: Optional[int], grid: Optional[TileGrid]) -> int:
        chunks = 1 if window is None else len(temporal_chunks(frames, window))
        return chunks * (1 if grid is None else grid.count)


def _check_config(part: str, block_types, expected_type: str, channels, groups, layers, spatial, temporal) -> None:
    if any(t != expected_type for t in block_types):
        raise ValueError(f"{part} block types {list(block_types)} are not supported; the VAE uses {expected_type}.")
    lengths = {len(block_types), len(channels), len(layers), len(spatial), len(temporal)}
    if len(lengths) != 1:
        raise ValueError(f"{part}: block types, channels, layers and up/down flags must have the same length; "
                         f"got {len(block_types)}, {len(channels)}, {len(layers)}, {len(spatial)}, {len(temporal)}.")
    for c in channels:
        if c % groups:
            raise ValueError(f"{part}: {c} channels cannot be split into {groups} GroupNorm groups.")
