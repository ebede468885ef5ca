"""Latent nodes: VAE decode (tiled, temporally chunked) and VAE encode, through the library's steps (memory
estimate, out-of-memory retry) with ComfyUI's placement, progress and interrupt."""

import logging

import torch

import comfy.model_management as mm
from comfy_api.v0_0_2 import io

from ..pyramid_flow.orchestration import decode_video, encodable_frames, encode_video, frames_to_video
from ..pyramid_flow.vae import SAVE_MEMORY_DECODE
from . import runtime
from .base import PyramidFlowNode
from .common import check_image, video_to_image
from .types import VAESocket

CATEGORY = "PyramidFlow/latent"
log = logging.getLogger("pyramid_flow")


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
        # The video is assembled on the intermediate device: the VAE's device holds a tile at a time.
        video = decode_video(runtime.vae_placement(vae), runtime.latent_5d(samples), tile_size, temporal_window,
                             tile_overlap, runtime.vae_progress(), output_device=mm.intermediate_device())
        return io.NodeOutput(video_to_image(video))


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
        video = frames_to_video(images[:frames, :h, :w])
        moments = encode_video(runtime.vae_placement(vae), video, tile_size, temporal_window, tile_overlap,
                               runtime.vae_progress())
        return io.NodeOutput({"samples": moments[:, : moments.shape[1] // 2].float().to(mm.intermediate_device())})


NODES = [PyramidFlowVideoVAEDecode, PyramidFlowVideoVAEEncode]
