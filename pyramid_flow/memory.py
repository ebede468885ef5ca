"""Peak inference memory of the DiT and the VAE: the bytes a call needs beyond the weights.

What ComfyUI's ``load_models_gpu(memory_required=...)`` asks for (it accounts the weights itself). Every estimate
is the sum of the tensors alive at the fullest moment of a call, counted from the code of the blocks, so it
follows their shapes exactly and holds for any size; ``docs/memory.md`` lists what is alive where, and
``tests/test_memory.py`` compares the estimates with torch's MemTracker on the real-size models.

Not counted: kernel workspaces (cuDNN convolution, attention kernels), the caching allocator's slack, and inputs
of a few MB (latents, text). Attention is assumed to run without an L x L score matrix (SDPA's flash or
memory-efficient kernels; :func:`~pyramid_flow.dit.sequence.masked_attention` runs each frame against its prefix).

Shapes: B batch, D DiT width, Lt text tokens, N image tokens, L = Lt + N; C channels, T frames, P pixels per frame.
"""

from dataclasses import dataclass
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .dit.base import PyramidDiT
from .dit.layers import MIN_PIECE_TOKENS, TOKEN_PIECES
from .dit.loading import dit_skeleton
from .dtypes import compute_dtype
from .history import max_sequence_length, window_frames
from .latents import LATENT_CHANNELS, PYRAMID_STAGES, SPATIAL_SCALE, TEMPORAL_SCALE, video_frames_for
from .text.embeddings import TEXT_TOKENS
from .vae.layers import FRAME_PIECE
from .vae.tiling import tile_grid

FLOAT32 = 4  # bytes; norms, RoPE and the SD3 position table compute in float32 whatever the activation dtype


def upcast_bytes(itemsize: int) -> int:
    """Bytes per element of the float32 copy that ``x.float()`` makes of a lower-precision tensor (none of a
    float32 one, where it returns the tensor itself)."""
    return FLOAT32 if itemsize < FLOAT32 else 0


# --- DiT -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTShape:
    """What the activation memory of a Pyramid Flow DiT depends on."""

    width: int  # D = heads * head dim
    heads: int
    single_blocks: bool  # miniFLUX's single-stream blocks over [text; image]
    sincos_positions: bool  # SD3's position table, cropped and upcast to float32 per clip
    patch_size: int = 2

    @classmethod
    def of_model(cls, dit: torch.nn.Module) -> Optional["DiTShape"]:
        """From a built :class:`~pyramid_flow.dit.PyramidDiT` (either variant); None for any other module."""
        if not isinstance(dit, PyramidDiT):
            return None
        table = getattr(getattr(dit, "pos_embed", None), "pos_embed", None)
        return cls(dit.context_embedder.out_features, dit.transformer_blocks[0].attn.heads,
                   len(getattr(dit, "single_transformer_blocks", ())) > 0, table is not None, dit.patch_size)


def dit_activation_bytes(shape: DiTShape, height: int, width: int, past_frames: int, batch: int = 2,
                         dtype: torch.dtype = torch.bfloat16, history_window: Optional[int] = None) -> int:
    """Peak activation bytes of the largest DiT call of a unit: its last pyramid stage.

    height, width: video size in pixels; past_frames: latent frames before the unit (the unit's index); the
    history it sees is :func:`~pyramid_flow.history.window_frames` of them; batch: 2 with classifier-free
    guidance; dtype: the compute dtype (bf16 also for fp8 weights).
    """
    history = len(window_frames(past_frames, history_window))
    tokens = max_sequence_length(height, width, history, PYRAMID_STAGES, shape.patch_size)
    current = max_sequence_length(height, width, 0, PYRAMID_STAGES, shape.patch_size) - TEXT_TOKENS
    return max(dit_moments(shape, batch, tokens - TEXT_TOKENS, current, dtype.itemsize))


def piece_tokens(length: int) -> int:
    """Tokens of the largest piece :func:`~pyramid_flow.dit.layers.per_token_chunks` splits ``length`` into."""
    pieces = min(TOKEN_PIECES, length // MIN_PIECE_TOKENS)
    return length if pieces <= 1 else -(-length // pieces)


def dit_moments(shape: DiTShape, batch: int, image: int, current: int, itemsize: int) -> List[int]:
    """Live bytes at the fullest moments of one DiT call of ``image`` image tokens (``current`` of them in the
    noisy frame), each the sum of the tensors alive there (see docs/memory.md)."""
    s, d = itemsize, batch * shape.width  # bytes per element; elements per token of a [B, L, D] tensor
    text_n, image_n = TEXT_TOKENS * d, image * d  # elements of [B, Lt | N, D]
    joint_n = text_n + image_n  # [B, L, D]
    segment = current * d * s  # the last frame's attention output, before it is written into place

    def qk_piece(tokens: int) -> int:
        """One piece of a q/k projection in flight: the projection, the QK norm's and RoPE's float32 terms."""
        return piece_tokens(tokens) * d * 4 * FLOAT32

    def v_piece(tokens: int) -> int:
        """One piece of the v projection in flight: its input gathered from the strided piece, the product and
        the biased output."""
        return piece_tokens(tokens) * d * 3 * s

    def mlp_piece(tokens: int) -> int:
        """One piece of a token-wise MLP: the modulation's float32 copies, or the 4D hidden layer before and after
        GELU beside the modulated input."""
        return piece_tokens(tokens) * d * max(upcast_bytes(s) + 3 * FLOAT32, 9 * s)

    # Joint block: its image and text inputs, their modulated copies, the forward's embedded text.
    joint = (2 * image_n + 3 * text_n) * s
    moments = [
        joint + 2 * joint_n * s + qk_piece(image),  # projecting k: q and the k buffer, one piece in flight
        joint + 3 * joint_n * s + v_piece(image),  # projecting v: q, k and the v buffer
        joint + 3 * joint_n * s + segment,  # attention: q (becoming the output), k, v, the last frame's piece
        # feed-forward (modulated copies freed): the residual, the text stream's output, one piece of the MLP
        (2 * image_n + 4 * text_n) * s + mlp_piece(image),
    ]
    if shape.single_blocks:
        # Single block over [text; image]: its input, its modulated copy, the text in and out of the double blocks.
        single = (2 * joint_n + 2 * text_n) * s
        moments += [
            single + 2 * joint_n * s + qk_piece(image + TEXT_TOKENS),  # projecting k
            single + 3 * joint_n * s + v_piece(image + TEXT_TOKENS),  # projecting v
            single + 3 * joint_n * s + segment,  # attention
            single + joint_n * s + mlp_piece(image + TEXT_TOKENS),  # MLP into the attention output, piece by piece
        ]
    if shape.sincos_positions:
        # SD3's embedding: the float32 crop of the position table, its resize for a history clip, and the image
        # tokens embedded so far.
        moments.append(2 * FLOAT32 * current * shape.width + s * image_n)
    return moments


def dit_memory(dit: torch.nn.Module, height: int, width: int, past_frames: int, batch: int = 2,
               dtype: Optional[torch.dtype] = None, history_window: Optional[int] = None) -> int:
    """:func:`dit_activation_bytes` of a built DiT; ``dtype``: the compute dtype, by default the one its weights
    compute in (bf16 for fp8 weights). 0 for a module that is not a Pyramid Flow DiT (a wrapper or a stand-in has
    no shape to estimate from)."""
    shape = DiTShape.of_model(dit)
    if shape is None:
        return 0
    dtype = dtype or compute_dtype(dit.proj_out.weight.dtype)
    return dit_activation_bytes(shape, height, width, past_frames, batch, dtype, history_window)


def dit_memory_estimate(variant: str, config: Mapping, height: int, width: int, past_frames: int, batch: int = 2,
                        dtype: torch.dtype = torch.bfloat16, history_window: Optional[int] = None) -> int:
    """:func:`dit_activation_bytes` from a DiT ``config.json`` ({} for the official sizes), with the model
    built on the meta device (no weights)."""
    shape = DiTShape.of_model(dit_skeleton(variant, config))
    return dit_activation_bytes(shape, height, width, past_frames, batch, dtype, history_window)


# --- VAE -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeStack:
    """The blocks of the encoder or the decoder, in the order they run."""

    channels: Tuple[int, ...]  # output channels per block
    layers: Tuple[int, ...]  # resnets per block
    spatial: Tuple[bool, ...]  # a spatial down/upsampler after the resnets
    temporal: Tuple[bool, ...]  # a temporal down/upsampler after that


@dataclass(frozen=True)
class VaeShape:
    """What the activation memory of the causal video VAE depends on."""

    encoder: VaeStack
    decoder: VaeStack
    pixel_channels: int = 3
    latent_channels: int = LATENT_CHANNELS

    @classmethod
    def from_config(cls, config: Optional[Mapping] = None) -> "VaeShape":
        """From the VAE's ``config.json`` keys; missing keys (or no config) take the official values."""
        c = dict(config or {})
        flags = (True, True, True, False)

        def stack(side: str, channels: Sequence[int], layers: Sequence[int], kind: str) -> VaeStack:
            channels = tuple(c.get(f"{side}_block_out_channels", channels))
            spatial = tuple(c.get(f"{side}_spatial_{kind}_sample", flags))
            temporal = tuple(c.get(f"{side}_temporal_{kind}_sample", flags))
            return VaeStack(channels, tuple(c.get(f"{side}_layers_per_block", layers)), spatial, temporal)

        encoder = stack("encoder", (128, 256, 512, 512), (2, 2, 2, 2), "down")
        decoder = stack("decoder", (128, 256, 512, 512), (3, 3, 3, 3), "up")
        decoder = VaeStack(decoder.channels[::-1], decoder.layers, decoder.spatial, decoder.temporal)
        return cls(encoder, decoder, c.get("encoder_in_channels", 3), c.get("encoder_out_channels", LATENT_CHANNELS))

    @classmethod
    def of_model(cls, vae: torch.nn.Module) -> "VaeShape":
        """From a built :class:`~pyramid_flow.vae.CausalVideoVAE` (its modules carry the official key names)."""

        def stack(blocks, spatial: str, temporal: str) -> VaeStack:
            return VaeStack(tuple(b.resnets[0].conv1.conv.out_channels for b in blocks),
                            tuple(len(b.resnets) for b in blocks),
                            tuple(getattr(b, spatial) is not None for b in blocks),
                            tuple(getattr(b, temporal) is not None for b in blocks))

        return cls(stack(vae.encoder.down_blocks, "downsamplers", "temporal_downsamplers"),
                   stack(vae.decoder.up_blocks, "upsamplers", "temporal_upsamplers"),
                   vae.encoder.conv_in.conv.in_channels, vae.latent_channels)


class ChunkWalk:
    """One temporal chunk of one tile through the encoder or the decoder, layer by layer, keeping the peak of
    live bytes: the causal cache (2 frames of every 3-wide conv's input; 1 for the temporal downsampler), what
    outer frames hold (a block's input while its resnets run) and each layer's own tensors.

    ``first``: the first chunk, where the cache fills as the layers run and the temporal upsamplers drop a
    frame; a later chunk starts with the whole cache (``cache``) and pads from it.
    """

    def __init__(self, itemsize: int, batch: int, first: bool, cache: int = 0):
        self.s, self.batch, self.first = itemsize, batch, first
        self.cache, self.peak = cache, 0

    def bytes(self, channels: int, frames: int, pixels: int, itemsize: Optional[int] = None) -> int:
        return self.batch * channels * frames * pixels * (itemsize or self.s)

    def at(self, *live: int) -> None:
        self.peak = max(self.peak, self.cache + sum(live))

    def conv(self, held: int, c_in: int, c_out: int, frames: int, pixels: int, out_frames: int, out_pixels: int,
             context: int = 2) -> int:
        """A causal 3-wide conv of an input held by the caller: its time-padded copy and its output; returns the
        output bytes. ``context``: frames it caches (and pads with on a later chunk). The first call on one frame
        is its last temporal tap alone (``CausalConv3d.last_tap``): no padded copy."""
        single = self.first and frames == 1
        pad = 2 if self.first else context
        if self.first:
            self.cache += self.bytes(c_in, context, pixels)
        out = self.bytes(c_out, out_frames, out_pixels)
        self.at(held, 0 if single else self.bytes(c_in, frames + pad, pixels), out)
        return out

    def norm(self, held: int, channels: int, frames: int, pixels: int) -> None:
        """GroupNorm + SiLU in float32: the upcast copy and the float32 result beside the held tensors."""
        self.at(held, self.bytes(channels, frames, pixels, upcast_bytes(self.s) + FLOAT32))

    def norm_conv(self, held: int, c_in: int, c_out: int, frames: int, pixels: int) -> None:
        """conv(SiLU(GroupNorm(x))) of an input held by the caller, over pieces of FRAME_PIECE frames written into
        one output buffer (one pass, without a buffer, when the chunk is no longer than a piece)."""
        piece = min(frames, FRAME_PIECE)
        buffer = self.bytes(c_out, frames, pixels) if frames > piece else 0
        self.norm(held + buffer, c_in, piece, pixels)
        self.conv(held + buffer + self.bytes(c_in, piece, pixels), c_in, c_out, piece, pixels, piece, pixels)

    def resnet(self, outer: int, c_in: int, c_out: int, frames: int, pixels: int) -> None:
        x, y = self.bytes(c_in, frames, pixels), self.bytes(c_out, frames, pixels)
        self.norm_conv(outer + x, c_in, c_out, frames, pixels)
        self.norm_conv(outer + x + y, c_out, c_out, frames, pixels)  # x and the first conv's output held
        self.at(outer, x, 2 * y if c_in != c_out else y)  # the shortcut's 1x1 conv if the channels change; x + h in h

    def attention(self, outer: int, channels: int, frames: int, pixels: int) -> None:
        """The mid block's per-frame attention: x, normed x, q, k, v, output, residual sum (no score matrix)."""
        x = self.bytes(channels, frames, pixels)
        self.norm(outer + x, channels, frames, pixels)
        self.at(outer, 7 * x)

    def upsample(self, outer: int, channels: int, frames: int, pixels: int, factor: int, temporal: bool = False) -> None:
        """A conv to ``factor`` x the channels, then the depth-to-space copy beside the conv output, over pieces of
        FRAME_PIECE frames written into one output buffer; a temporal upsampler's first call on one frame computes
        only the frame it keeps."""
        piece = min(frames, FRAME_PIECE)
        x, y = self.bytes(channels, frames, pixels), self.bytes(channels * factor, piece, pixels)
        if temporal and self.first and frames == 1:
            self.conv(outer + x, channels, channels, 1, pixels, 1, pixels)
            return
        buffer = self.bytes(channels * factor, frames, pixels) if frames > piece else 0
        self.conv(outer + x + buffer, channels, channels * factor, piece, pixels, piece, pixels)
        self.at(outer, x, buffer, 2 * y)

    def blocks(self, stack: VaeStack, c_in: int, frames: int, pixels: int, outer: int,
               decode: bool) -> Tuple[int, int, int]:
        """Run the blocks of ``stack``; returns (channels, frames, pixels) of their output."""
        for channels, layers, spatial, temporal in zip(stack.channels, stack.layers, stack.spatial, stack.temporal):
            held = outer + self.bytes(c_in, frames, pixels)  # the block's input, held by the stack's forward
            for i in range(layers):
                self.resnet(outer if i == 0 else held, c_in if i == 0 else channels, channels, frames, pixels)
            c_in = channels
            if spatial and decode:
                self.upsample(held, channels, frames, pixels, 4)
                pixels *= 4
            elif spatial:
                self.conv(held + self.bytes(channels, frames, pixels), channels, channels, frames, pixels, frames,
                          pixels // 4)
                pixels //= 4
            if temporal and decode:
                self.upsample(held, channels, frames, pixels, 2, temporal=True)
                frames = 2 * frames - 1 if self.first else 2 * frames
            elif temporal:
                out = (frames - 1) // 2 + 1 if self.first else frames // 2
                self.conv(held + self.bytes(channels, frames, pixels), channels, channels, frames, pixels, out, pixels,
                          context=1)
                frames = out
        return c_in, frames, pixels

    def mid_block(self, channels: int, frames: int, pixels: int, outer: int) -> None:
        held = outer + self.bytes(channels, frames, pixels)
        self.resnet(outer, channels, channels, frames, pixels)
        self.attention(held, channels, frames, pixels)
        self.resnet(held, channels, channels, frames, pixels)

    def decoder(self, shape: VaeShape, frames: int, pixels: int) -> int:
        """Latent chunk [B, 16, frames, h, w] (pixels = h * w) -> the peak; its output is counted by the caller."""
        stack, mid = shape.decoder, shape.decoder.channels[0]
        held = self.bytes(shape.latent_channels, frames, pixels)  # the latent chunk in the VAE layout
        self.conv(held, shape.latent_channels, mid, frames, pixels, frames, pixels)
        self.mid_block(mid, frames, pixels, held)
        channels, frames, pixels = self.blocks(stack, mid, frames, pixels, held, decode=True)
        self.final(held, channels, shape.pixel_channels, frames, pixels)
        return self.peak

    def encoder(self, shape: VaeShape, frames: int, pixels: int) -> int:
        """Video chunk [B, 3, frames, H, W] (pixels = H * W) -> the peak."""
        stack = shape.encoder
        held = self.bytes(shape.pixel_channels, frames, pixels)  # the chunk copied into the VAE layout
        self.conv(held, shape.pixel_channels, stack.channels[0], frames, pixels, frames, pixels)
        channels, frames, pixels = self.blocks(stack, stack.channels[0], frames, pixels, held, decode=False)
        self.mid_block(channels, frames, pixels, held)
        self.final(held, channels, 2 * shape.latent_channels, frames, pixels)
        return self.peak

    def final(self, outer: int, channels: int, out_channels: int, frames: int, pixels: int) -> None:
        """GroupNorm, SiLU and conv_out, the stack's last activation held by its forward."""
        x = self.bytes(channels, frames, pixels)
        self.norm(outer + x, channels, frames, pixels)
        self.conv(outer + 2 * x, channels, out_channels, frames, pixels, frames, pixels)


def chunk_peaks(shape: VaeShape, decode: bool, first_frames: int, frames: int, pixels: int, batch: int,
                itemsize: int) -> Tuple[int, int]:
    """Peaks of a tile's first chunk and of a later one (which carries the whole causal cache; 0 if there is
    none): ``first_frames`` and ``frames`` input frames of ``pixels`` each."""
    run = ChunkWalk.decoder if decode else ChunkWalk.encoder
    first = ChunkWalk(itemsize, batch, first=True)
    first_peak = run(first, shape, first_frames, pixels)
    later = ChunkWalk(itemsize, batch, first=False, cache=first.cache)
    return first_peak, run(later, shape, frames, pixels) if frames else 0


def tile_sizes(height: int, width: int, tile: Optional[int], out_tile: Optional[int], overlap: float,
               out_size) -> Iterator[Tuple[int, int]]:
    """The distinct (height, width) of the tiles of an input (the whole input when untiled)."""
    grid = tile_grid(height, width, tile, out_tile, overlap, out_size) if tile else None
    if grid is None:
        yield height, width
        return
    for rows in {min(grid.tile, height - y) for y in grid.rows}:
        for cols in {min(grid.tile, width - x) for x in grid.cols}:
            yield rows, cols


def chunk_frames(total: int, window: int, scale: int) -> Tuple[int, int]:
    """(first chunk, later chunk) input frames for ``window`` latent frames per chunk; 0 when one chunk covers it."""
    first = window * scale + 1
    return (total, 0) if total <= first else (first, window * scale)


def vae_decode_bytes(shape: VaeShape, latent_shape: Sequence[int], window_size: int = 1,
                     tile_sample_min_size: Optional[int] = 256, tile_overlap: float = 0.25,
                     dtype: torch.dtype = torch.bfloat16, output_on_device: bool = True) -> int:
    """Peak bytes of ``CausalVideoVAE.decode(temporal_chunk=True, ...)`` beyond the weights.

    latent_shape: [B, 16, T, h, w]; window_size: latent frames per chunk; tile_sample_min_size: tile in pixels
    (None: untiled); dtype: the VAE's dtype. The peak is one chunk of the largest tile plus the video it writes
    into: the tile's frames, the whole output (there from the second tile on; not with ``output_on_device=False``,
    when ``decode(output_device=...)`` assembles it elsewhere) and the blend strips kept for the next row and
    column.
    """
    batch, _, latent_frames, h, w = latent_shape
    s, frames = dtype.itemsize, video_frames_for(latent_frames)
    first, later = chunk_frames(latent_frames, window_size, 1)
    tile = tile_sample_min_size // SPATIAL_SCALE if tile_sample_min_size else None
    peak = 0
    for th, tw in tile_sizes(h, w, tile, tile_sample_min_size, tile_overlap, lambda n: n * SPATIAL_SCALE):
        pixels = th * tw * SPATIAL_SCALE ** 2
        first_peak, later_peak = chunk_peaks(shape, True, first, later, th * tw, batch, s)
        # From the second chunk on: the tile's frames (gathered from its chunks) and the previous chunk's frames.
        untiled = tile is None or (h <= tile and w <= tile)
        tile_frames = 0 if untiled and not output_on_device else frames  # untiled, the gathered frames are the output
        gathered = batch * 3 * (tile_frames + TEMPORAL_SCALE * window_size) * pixels * s
        peak = max(peak, first_peak, later_peak + gathered if later else 0)
    if tile is None or (h <= tile and w <= tile):
        return peak
    output = batch * 3 * frames * h * w * SPATIAL_SCALE ** 2 * s if output_on_device else 0
    blend = int(tile_sample_min_size * tile_overlap)
    strips = batch * 3 * frames * blend * (w * SPATIAL_SCALE + tile_sample_min_size) * s
    return peak + output + strips


def vae_stream_cache_bytes(shape: VaeShape, latent_shape: Sequence[int], window_size: int = 1,
                           tile_sample_min_size: Optional[int] = 256, tile_overlap: float = 0.25,
                           dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of every tile's causal cache together: what ``CausalVideoVAE.iter_decode`` keeps between chunks."""
    batch, _, latent_frames, h, w = latent_shape
    tile = tile_sample_min_size // SPATIAL_SCALE if tile_sample_min_size else None
    grid = tile_grid(h, w, tile, tile_sample_min_size, tile_overlap, lambda n: n * SPATIAL_SCALE) if tile else None
    first = chunk_frames(latent_frames, window_size, 1)[0]
    total = 0
    for rows in ([min(grid.tile, h - y) for y in grid.rows] if grid else [h]):
        for cols in ([min(grid.tile, w - x) for x in grid.cols] if grid else [w]):
            walk = ChunkWalk(dtype.itemsize, batch, first=True)
            walk.decoder(shape, first, rows * cols)
            total += walk.cache
    return total


def vae_encode_bytes(shape: VaeShape, video_shape: Sequence[int], window_size: int = 2,
                     tile_sample_min_size: Optional[int] = 256, tile_overlap: float = 0.25,
                     dtype: torch.dtype = torch.bfloat16) -> int:
    """Peak bytes of ``CausalVideoVAE.encode(temporal_chunk=True, ...)`` beyond the weights, the input included.

    video_shape: [B, 3, F, H, W] with F = 1 + 8k; window_size: latent frames per chunk (8x as many video
    frames); tile_sample_min_size: tile in pixels (None: untiled); dtype: the VAE's dtype. The peak is the input
    video, one chunk of the largest tile, and the moments [B, 32, T', H/8, W/8] it writes.
    """
    batch, _, frames, height, width = video_shape
    s = dtype.itemsize
    first, later = chunk_frames(frames, window_size, TEMPORAL_SCALE)
    tile = tile_sample_min_size
    out_tile = tile // SPATIAL_SCALE if tile else None
    peak = max(max(chunk_peaks(shape, False, first, later, th * tw, batch, s))
               for th, tw in tile_sizes(height, width, tile, out_tile, tile_overlap, lambda n: -(-n // SPATIAL_SCALE)))
    latent_frames = (frames - 1) // TEMPORAL_SCALE + 1
    moments = batch * 2 * shape.latent_channels * latent_frames * -(-height // 8) * -(-width // 8) * s
    return batch * shape.pixel_channels * frames * height * width * s + peak + 2 * moments


def vae_decode_memory(latent_shape: Sequence[int], window_size: int = 1, tile_sample_min_size: Optional[int] = 256,
                      tile_overlap: float = 0.25, dtype: torch.dtype = torch.bfloat16,
                      config: Optional[Mapping] = None, output_on_device: bool = True) -> int:
    """:func:`vae_decode_bytes` from a VAE ``config.json`` (None: the official VAE), without building the model."""
    return vae_decode_bytes(VaeShape.from_config(config), latent_shape, window_size, tile_sample_min_size,
                            tile_overlap, dtype, output_on_device)


def vae_encode_memory(video_shape: Sequence[int], window_size: int = 2, tile_sample_min_size: Optional[int] = 256,
                      tile_overlap: float = 0.25, dtype: torch.dtype = torch.bfloat16,
                      config: Optional[Mapping] = None) -> int:
    """:func:`vae_encode_bytes` from a VAE ``config.json`` (None: the official VAE), without building the model."""
    return vae_encode_bytes(VaeShape.from_config(config), video_shape, window_size, tile_sample_min_size,
                            tile_overlap, dtype)


# --- a built VAE: its structure and dtype read from its modules ------------------------------------------------


def vae_dtype(vae: torch.nn.Module) -> torch.dtype:
    return vae.decoder.conv_in.conv.weight.dtype


def decode_memory(vae: torch.nn.Module, latent_shape: Sequence[int], window_size: int = 1,
                  tile_sample_min_size: Optional[int] = 256, tile_overlap: float = 0.25,
                  output_on_device: bool = True) -> int:
    """:func:`vae_decode_bytes` of a built :class:`~pyramid_flow.vae.CausalVideoVAE`, in its dtype;
    ``output_on_device=False`` when the video is assembled on another device (``decode(output_device=...)``)."""
    return vae_decode_bytes(VaeShape.of_model(vae), latent_shape, window_size, tile_sample_min_size, tile_overlap,
                            vae_dtype(vae), output_on_device)


def stream_cache_memory(vae: torch.nn.Module, latent_shape: Sequence[int], window_size: int = 1,
                        tile_sample_min_size: Optional[int] = 256, tile_overlap: float = 0.25) -> int:
    """:func:`vae_stream_cache_bytes` of a built VAE: the causal caches ``iter_decode`` keeps for all tiles."""
    return vae_stream_cache_bytes(VaeShape.of_model(vae), latent_shape, window_size, tile_sample_min_size,
                                  tile_overlap, vae_dtype(vae))


def encode_memory(vae: torch.nn.Module, video_shape: Sequence[int], window_size: int = 2,
                  tile_sample_min_size: Optional[int] = 256, tile_overlap: float = 0.25) -> int:
    """:func:`vae_encode_bytes` of a built VAE for a video [B, 3, F, H, W] (the video included), in its dtype."""
    return vae_encode_bytes(VaeShape.of_model(vae), video_shape, window_size, tile_sample_min_size, tile_overlap,
                            vae_dtype(vae))
