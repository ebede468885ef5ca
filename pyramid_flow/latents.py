"""Latent bookkeeping: normalisation, frame counts, resolutions and pixel conversion."""

import math
from typing import Optional, Tuple

import torch

from .variants import Variant

FPS = 24
LATENT_CHANNELS = 16  # the VAE's latent channels = the DiT's input and output channels
SPATIAL_SCALE = 8  # pixels per latent pixel (the VAE's spatial compression)
TEMPORAL_SCALE = 8  # pixel frames per latent frame after the first (the VAE's causal temporal compression)
PYRAMID_STAGES = 3  # spatial resolutions each latent frame passes through (1/4, 1/2, full) in the released models
RESOLUTION_MULTIPLE = 64  # VAE 8 x pyramid 4 x patch 2
TRAINED_LATENT_FRAMES = 31  # the longest video the checkpoints were trained on (768p, 10 s); temporal ids 0..30
TRAINED_RESOLUTIONS = {
    "384p": ((640, 384),),
    "768p": ((1280, 768),),
    "image": ((1024, 1024), (1280, 768), (768, 1280)),
}
MAX_LATENT_FRAMES = {"384p": 16, "768p": 31, "image": 1}


def normalize(z: torch.Tensor, variant: Variant) -> torch.Tensor:
    """VAE latent [B, C, T, h, w] -> DiT space: frame 0 with the image constants, later frames with the video ones."""
    image, video = variant.image_norm, variant.video_norm
    first = (z[:, :, :1] - image.shift) * image.scale
    return torch.cat([first, (z[:, :, 1:] - video.shift) * video.scale], dim=2)


def denormalize(x: torch.Tensor, variant: Variant) -> torch.Tensor:
    """Inverse of :func:`normalize`, in the dtype of ``x``."""
    image, video = variant.image_norm, variant.video_norm
    first = x[:, :, :1] / image.scale + image.shift
    return torch.cat([first, x[:, :, 1:] / video.scale + video.shift], dim=2)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """VAE output [B, 3, F, H, W] in [-1, 1] -> uint8 frames [B*F, H, W, 3], truncated like the official code."""
    pixels = video.mul(127.5).add(127.5).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).flatten(0, 1)


def video_frames_for(latent_frames: int) -> int:
    """Video frames decoded from ``latent_frames``: the first latent frame is one image, each later one 8 (the
    1 + 8k rule of the causal VAE)."""
    return TEMPORAL_SCALE * (latent_frames - 1) + 1


def latent_frames_for_seconds(seconds: float, fps: int = FPS) -> int:
    """Latent frames needed for at least ``seconds`` of video (5 s -> 16, 10 s -> 31)."""
    return max(1, math.ceil((seconds * fps - 1) / TEMPORAL_SCALE) + 1)


def latent_frames_to_add(seconds: float, fps: int = FPS) -> int:
    """Latent frames that add at least ``seconds`` to a video: 8 video frames, 1/3 s at 24 fps, each."""
    return max(1, math.ceil(seconds * fps / TEMPORAL_SCALE - 1e-9))


def latent_frames_for_video(frames: int) -> int:
    """Latent frames of an encoded video of ``frames`` pixel frames (1 + 8k frames -> 1 + k)."""
    return (frames - 1) // TEMPORAL_SCALE + 1


def unit_at_seconds(seconds: float, fps: int = FPS) -> int:
    """The unit (latent frame) whose pixel frames hold the moment ``seconds``: unit 0 is frame 0, unit u >= 1
    decodes to frames 8 (u - 1) + 1 .. 8 u."""
    frame = round(seconds * fps)
    return 0 if frame <= 0 else (frame - 1) // TEMPORAL_SCALE + 1


def check_resolution(width: int, height: int, source: Optional[str] = None) -> None:
    """Raise a ValueError naming the fix when width/height cannot go through the pyramid; ``source`` names where
    the size came from when it is not the request's own width and height (an image, a latent, a video)."""
    for name, value in (("width", width), ("height", height)):
        if value < RESOLUTION_MULTIPLE or value % RESOLUTION_MULTIPLE:
            lower = max(RESOLUTION_MULTIPLE, value // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE)
            message = (
                f"{name} {value} is not a multiple of {RESOLUTION_MULTIPLE}: Pyramid Flow needs multiples of 64 "
                f"(VAE 8 x pyramid 4 x patch 2). Use {lower} or {lower + RESOLUTION_MULTIPLE}; the trained sizes are "
                "640x384 (384p) and 1280x768 (768p)."
            )
            if source is not None:
                message = (f"The size {width}x{height} comes from {source}: {message} Resize it to multiples of 64 "
                           "before it is encoded.")
            raise ValueError(message)


def check_latent_frames(latent_frames: int, checkpoint: Optional[str]) -> None:
    """Raise for a frame count the checkpoint cannot produce at all."""
    if latent_frames < 1:
        raise ValueError(f"A video needs at least 1 latent frame, got {latent_frames}.")
    if checkpoint == "image" and latent_frames > 1:
        raise ValueError(
            "The image DiT (diffusion_transformer_image) makes single images: use 1 latent frame (duration 0), or load "
            "diffusion_transformer_384p / diffusion_transformer_768p for video."
        )


def resolution_warning(width: int, height: int, latent_frames: int, checkpoint: Optional[str]) -> Optional[str]:
    """A message when the size or length is outside what ``checkpoint`` ('384p', '768p', 'image') was trained on."""
    if checkpoint not in TRAINED_RESOLUTIONS:
        return None
    trained = TRAINED_RESOLUTIONS[checkpoint]
    problems = []
    if (width, height) not in trained:
        sizes = ", ".join(f"{w}x{h}" for w, h in trained)
        problems.append(f"{width}x{height} is not a trained resolution of the {checkpoint} checkpoint ({sizes})")
    if latent_frames > MAX_LATENT_FRAMES[checkpoint]:
        problems.append(f"{latent_frames} latent frames exceed the {checkpoint} checkpoint's maximum of {MAX_LATENT_FRAMES[checkpoint]}")
    return "; ".join(problems) + "; expect degraded output." if problems else None


def pixel_size(latent: torch.Tensor) -> Tuple[int, int]:
    """(height, width) in pixels of a latent [..., h, w]."""
    return latent.shape[-2] * SPATIAL_SCALE, latent.shape[-1] * SPATIAL_SCALE
