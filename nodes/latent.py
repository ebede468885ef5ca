"""Latent nodes: VAE decode (tiled, temporally chunked) and VAE encode, with their memory estimate, progress,
interrupt and out-of-memory retry (shared with the image-to-video encode)."""

import logging
from typing import Callable, Optional

import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.v0_0_2 import io

from ..pyramid_flow.latents import LATENT_CHANNELS, normalize
from ..pyramid_flow.memory import decode_memory, encode_memory
from ..pyramid_flow.variants import get_variant
from ..pyramid_flow.vae import SAVE_MEMORY_DECODE
from . import models
from .base import PyramidFlowNode
from .common import check_image, encodable_frames, image_to_video, smaller_settings, video_to_image
from .types import NORMALIZED_KEY, VAESocket

CATEGORY = "PyramidFlow/latent"
log = logging.getLogger("pyramid_flow")


def progress_callback() -> Callable[[int, int], None]:
    """A VAE callback(done, total) that drives the node's progress bar and checks for an interrupt per piece."""
    pbar = comfy.utils.ProgressBar(1)

    def callback(done: int, total: int) -> None:
        pbar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    return callback


def run_with_oom_retry(fn: Callable[[int, int], torch.Tensor], tile: int, window: int, what: str) -> torch.Tensor:
    """Call fn(tile, window); on out-of-memory free the cache and retry with smaller settings. Frees cached memory
    when it fails or is interrupted."""
    try:
        while True:
            try:
                return fn(tile, window)
            except mm.OOM_EXCEPTION:
                mm.soft_empty_cache(True)
                smaller = smaller_settings(tile, window)
                if smaller is None:
                    raise
                log.warning("Pyramid Flow %s ran out of memory at tile %s, window %s; retrying with tile %s, window %s",
                            what, tile, window, *smaller)
                tile, window = smaller
    except BaseException:
        models.free_after_interrupt()
        raise


def encode_with_retry(vae, video: torch.Tensor, tile: int, window: int, what: str, tile_overlap: float = 0.25):
    """VAE input [1, 3, F, H, W] in [-1, 1] -> moments [1, 32, T, H/8, W/8], loaded through model management, with
    progress, interrupt and the out-of-memory retry."""
    dtype, module = vae.model.dtype_, vae.model.vae
    memory = encode_memory(module, tuple(video.shape), window, tile or None, tile_overlap)
    mm.load_models_gpu([vae], memory_required=memory)
    video = video.to(device=vae.load_device, dtype=dtype)

    def encode(tile: int, window: int) -> torch.Tensor:
        with torch.no_grad():
            return module.encode(video, temporal_chunk=video.shape[2] > 1, window_size=window,
                                 tile_sample_min_size=tile or None, tile_overlap=tile_overlap,
                                 callback=progress_callback())

    return run_with_oom_retry(encode, tile, window, what)


def decode_latent(vae, z: torch.Tensor, tile: int, tile_overlap: float, window: int) -> torch.Tensor:
    """VAE-space latent [B, 16, T, h, w] -> IMAGE [B*F, H, W, 3] on the intermediate device."""
    dtype, module = vae.model.dtype_, vae.model.vae
    output_device = mm.intermediate_device()  # the video is assembled there: the VAE's device holds a tile at a time
    on_device = torch.device(output_device) == torch.device(vae.load_device)
    memory = decode_memory(module, tuple(z.shape), window, tile or None, tile_overlap, output_on_device=on_device)
    mm.load_models_gpu([vae], memory_required=memory)
    z = z.to(device=vae.load_device, dtype=dtype)

    def decode(tile: int, window: int) -> torch.Tensor:
        with torch.no_grad():
            return module.decode(z, temporal_chunk=True, window_size=window, tile_sample_min_size=tile or None,
                                 tile_overlap=tile_overlap, callback=progress_callback(), output_device=output_device)

    return video_to_image(run_with_oom_retry(decode, tile, window, "VAE decode"))


def latent_5d(samples: dict, name: str = "samples") -> torch.Tensor:
    """The VAE-space latent [B, 16, T, h, w] of a LATENT input, with a clear error for other models' latents."""
    z = samples["samples"]
    z = z if z.dim() == 5 else z.unsqueeze(2)
    if z.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"The input '{name}' has {z.shape[1]} channels; Pyramid Flow latents have {LATENT_CHANNELS} "
                         "(from the Pyramid Flow Sampler or VAE Encode). Core VAE Decode is for other models' latents.")
    return z


def normalized_latent(samples: dict, variant_name: str, name: str) -> torch.Tensor:
    """The DiT-space latent of a LATENT: the sampler's own copy when it still matches ``samples`` (exact), else the
    VAE-space samples normalised (a float32 rounding away from the sampler's numbers)."""
    z = latent_5d(samples, name)
    variant = get_variant(variant_name)
    carried: Optional[torch.Tensor] = samples.get(NORMALIZED_KEY)
    if carried is not None and carried.shape == z.shape and torch.allclose(
            normalize(z.float(), variant), carried.float(), rtol=1e-4, atol=1e-4):
        return carried.float()
    return normalize(z.float(), variant)


def _tile_inputs(default_tile: int, default_window: int, window_tooltip: str) -> list:
    return [
        io.Int.Input("tile_size", default=default_tile, min=0, max=4096, step=32, tooltip=(
            "Spatial tile in pixels (official save_memory: 256). Smaller tiles use less VRAM; 0 processes whole "
            "frames. On out-of-memory the node retries with smaller tiles.")),
        io.Float.Input("tile_overlap", default=0.25, min=0.0, max=0.5, step=0.05, round=0.01, tooltip=(
            "Overlap between tiles as a fraction of the tile (official: 0.25); blended to hide seams.")),
        io.Int.Input("temporal_window", default=default_window, min=1, max=64, tooltip=window_tooltip),
    ]


class PyramidFlowVideoVAEDecode(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoVAEDecode",
            display_name="Pyramid Flow VAE Decode",
            category=CATEGORY,
            description="Decode a Pyramid Flow latent to frames, tiled in space and chunked in time to bound VRAM.",
            inputs=[
                VAESocket.Input("vae", tooltip="From 'Pyramid Flow VAE Loader'."),
                io.Latent.Input("samples", tooltip="From the Pyramid Flow Sampler (or VAE Encode, or Extend)."),
                *_tile_inputs(SAVE_MEMORY_DECODE.tile_sample_min_size, SAVE_MEMORY_DECODE.window_size, (
                    "Latent frames decoded per chunk after the first (official save_memory: 1; 2 is faster with more "
                    "VRAM). The causal cache carries across chunks, so the result does not depend on it.")),
            ],
            outputs=[io.Image.Output(display_name="images",
                                     tooltip="Video frames [frames, H, W, 3] for CreateVideo (fps 24) -> SaveVideo.")],
        )

    @classmethod
    def process(cls, vae, samples: dict, tile_size: int, tile_overlap: float, temporal_window: int) -> io.NodeOutput:
        return io.NodeOutput(decode_latent(vae, latent_5d(samples), tile_size, tile_overlap, temporal_window))


class PyramidFlowVideoVAEEncode(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoVAEEncode",
            display_name="Pyramid Flow VAE Encode",
            category=CATEGORY,
            description="Encode frames with the Pyramid Flow causal video VAE.",
            inputs=[
                VAESocket.Input("vae", tooltip="From 'Pyramid Flow VAE Loader'."),
                io.Image.Input("images", tooltip=(
                    "A video as frames [frames, H, W, 3] (or one image). The causal VAE takes 1 + 8k frames: extra "
                    "frames at the end are dropped. Sides are cropped to multiples of 8.")),
                *_tile_inputs(256, 2, (
                    "Latent frames encoded per chunk, i.e. 8x as many video frames (official: 2 = 16 frames). The "
                    "causal cache carries across chunks, so only memory changes.")),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip=(
                "Latent [1, 16, T, H/8, W/8] in VAE space (the distribution mean): decode, save, continue it with "
                "Pyramid Flow Extend, or use it as the first frame of image-to-video."))],
        )

    @classmethod
    def process(cls, vae, images: torch.Tensor, tile_size: int, tile_overlap: float,
                temporal_window: int) -> io.NodeOutput:
        check_image(images, "images")
        frames = encodable_frames(images.shape[0])
        if frames != images.shape[0]:
            log.warning("Pyramid Flow VAE Encode: using the first %d of %d frames (the VAE takes 1 + 8k)",
                        frames, images.shape[0])
        h, w = images.shape[1] // 8 * 8, images.shape[2] // 8 * 8
        video = image_to_video(images[:frames, :h, :w])
        moments = encode_with_retry(vae, video, tile_size, temporal_window, "VAE encode", tile_overlap)
        return io.NodeOutput({"samples": moments[:, : moments.shape[1] // 2].float().to(mm.intermediate_device())})


NODES = [PyramidFlowVideoVAEDecode, PyramidFlowVideoVAEEncode]
