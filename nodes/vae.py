"""VAE decode (tiled, temporally chunked) and VAE encode nodes."""

import logging

import torch

import comfy.model_management as mm
import comfy.utils

from ..pyramid_flow.pipeline import DECODE_SETTINGS
from . import models
from .common import check_image, encodable_frames, image_to_video, smaller_settings, video_to_image
from .loaders import VAE_TYPE
from .sampler import vae_memory

log = logging.getLogger("pyramid_flow")
SAVE_MEMORY_WINDOW, SAVE_MEMORY_TILE = DECODE_SETTINGS[True]  # the official save_memory=True decode


def _latent_5d(samples: dict) -> torch.Tensor:
    z = samples["samples"]
    z = z if z.dim() == 5 else z.unsqueeze(2)
    if z.shape[1] != 16:
        raise ValueError(f"This latent has {z.shape[1]} channels; Pyramid Flow latents have 16 (from the Pyramid Flow "
                         "Sampler or VAE Encode). Core VAE Decode is for other models' latents.")
    return z


def _progress():
    pbar = comfy.utils.ProgressBar(1)

    def callback(done, total):
        pbar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    return callback


def run_with_oom_retry(fn, tile: int, window: int, what: str):
    """Call fn(tile, window); on out-of-memory free the cache and retry with smaller settings."""
    while True:
        try:
            return fn(tile, window)
        except mm.OOM_EXCEPTION:
            mm.soft_empty_cache(True)
            nxt = smaller_settings(tile, window)
            if nxt is None:
                raise
            log.warning("Pyramid Flow %s ran out of memory at tile %s, window %s; retrying with tile %s, window %s",
                        what, tile, window, *nxt)
            tile, window = nxt


class PyramidFlowVideoVAEDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE_TYPE, {"tooltip": "From 'Pyramid Flow VAE Loader'."}),
                "samples": ("LATENT", {"tooltip": "From the Pyramid Flow Sampler (or VAE Encode)."}),
                "tile_size": ("INT", {
                    "default": SAVE_MEMORY_TILE, "min": 0, "max": 4096, "step": 32,
                    "tooltip": "Spatial tile in pixels (official save_memory: 256). Smaller tiles use less VRAM; "
                               "0 decodes whole frames. On out-of-memory the node retries with smaller tiles."}),
                "tile_overlap": ("FLOAT", {
                    "default": 0.25, "min": 0.0, "max": 0.5, "step": 0.05, "round": 0.01,
                    "tooltip": "Overlap between tiles as a fraction of the tile (official: 0.25); blended to hide "
                               "seams."}),
                "temporal_window": ("INT", {
                    "default": SAVE_MEMORY_WINDOW, "min": 1, "max": 64,
                    "tooltip": "Latent frames decoded per chunk after the first (official save_memory: 1; 2 is "
                               "faster with more VRAM). The causal cache carries across chunks, so the result does "
                               "not depend on it."}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Video frames [frames, H, W, 3] for CreateVideo (fps 24) -> SaveVideo.",)
    FUNCTION = "decode"
    CATEGORY = "PyramidFlow/latent"
    DESCRIPTION = "Decode a Pyramid Flow latent to frames, tiled in space and chunked in time to bound VRAM."

    def decode(self, vae, samples, tile_size, tile_overlap, temporal_window):
        z = _latent_5d(samples)
        dtype, module = vae.model.dtype_, vae.model.vae
        height, width = z.shape[-2] * 8, z.shape[-1] * 8
        output_bytes = z.shape[0] * 3 * (8 * z.shape[2] - 7) * height * width * mm.dtype_size(dtype)
        memory = vae_memory(height, width, 8 * temporal_window + 1, tile_size, dtype) + output_bytes
        mm.load_models_gpu([vae], memory_required=memory)
        z = z.to(device=vae.load_device, dtype=dtype)

        def decode(tile, window):
            with torch.no_grad():
                return module.decode(z, temporal_chunk=True, window_size=window, tile_sample_min_size=tile or None,
                                     tile_overlap=tile_overlap, callback=_progress())

        try:
            video = run_with_oom_retry(decode, tile_size, temporal_window, "VAE decode")
        except BaseException:
            models.free_after_interrupt()
            raise
        return (video_to_image(video).to(mm.intermediate_device()),)


class PyramidFlowVideoVAEEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE_TYPE, {"tooltip": "From 'Pyramid Flow VAE Loader'."}),
                "images": ("IMAGE", {"tooltip": "A video as frames [frames, H, W, 3] (or one image). The causal VAE "
                                     "takes 1 + 8k frames: extra frames at the end are dropped. Sides are cropped to "
                                     "multiples of 8."}),
                "tile_size": ("INT", {
                    "default": 256, "min": 0, "max": 4096, "step": 32,
                    "tooltip": "Spatial tile in pixels (0 = whole frames); retried smaller on out-of-memory."}),
                "tile_overlap": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 0.5, "step": 0.05, "round": 0.01,
                                           "tooltip": "Tile overlap as a fraction of the tile."}),
                "temporal_window": ("INT", {
                    "default": 2, "min": 1, "max": 64,
                    "tooltip": "Latent frames encoded per chunk, i.e. 8x as many video frames (official: 2 = 16 "
                               "frames). The causal cache carries across chunks, so only memory changes."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Latent [1, 16, T, H/8, W/8] in VAE space (the distribution mean): decode, save or use as "
                       "the first frame for image-to-video.",)
    FUNCTION = "encode"
    CATEGORY = "PyramidFlow/latent"
    DESCRIPTION = "Encode frames with the Pyramid Flow causal video VAE."

    def encode(self, vae, images, tile_size, tile_overlap, temporal_window):
        check_image(images, "images")
        frames = encodable_frames(images.shape[0])
        if frames != images.shape[0]:
            log.warning("Pyramid Flow VAE Encode: using the first %d of %d frames (the VAE takes 1 + 8k)",
                        frames, images.shape[0])
        h, w = images.shape[1] // 8 * 8, images.shape[2] // 8 * 8
        video = image_to_video(images[:frames, :h, :w])
        dtype, module = vae.model.dtype_, vae.model.vae
        mm.load_models_gpu([vae], memory_required=vae_memory(h, w, 8 * temporal_window + 1, tile_size, dtype))
        video = video.to(device=vae.load_device, dtype=dtype)

        def encode(tile, window):
            with torch.no_grad():
                return module.encode(video, temporal_chunk=frames > 1, window_size=window * 8,
                                     tile_sample_min_size=tile or None, tile_overlap=tile_overlap)

        try:
            moments = run_with_oom_retry(encode, tile_size, temporal_window, "VAE encode")
        except BaseException:
            models.free_after_interrupt()
            raise
        return ({"samples": moments[:, : moments.shape[1] // 2].float().to(mm.intermediate_device())},)
