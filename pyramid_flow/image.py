"""First-frame images for image-to-video: aspect-preserving resize and conversion to VAE input."""

from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]
RESIZE_MODES = ("crop", "pad")


def to_pil(image: ImageLike) -> Image.Image:
    """PIL RGB from a PIL image, a uint8 [H, W, C] array, or a float [H, W, C] tensor in [0, 1] (ComfyUI IMAGE);
    C is 3, 4 (alpha dropped) or 1 (grey)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() == 4:
            image = image[0]
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.cpu().numpy()
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got an array of shape {tuple(image.shape)}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(image[:, :, :3]))


def resize_to(image: ImageLike, width: int, height: int, mode: str = "crop") -> Image.Image:
    """Fit ``image`` to width x height without squashing: 'crop' fills and centre-crops (the official app's
    resize_crop_image, LANCZOS), 'pad' fits inside and letterboxes with black."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got '{mode}'")
    image = to_pil(image)
    if min(image.size) < 8:
        raise ValueError(f"The image is {image.width}x{image.height} pixels, too small to condition a video: it "
                         "needs at least 8x8.")
    if image.size == (width, height):
        return image
    w, h = image.size
    scale = max(width / w, height / h) if mode == "crop" else min(width / w, height / h)
    # max(1, ...): an extreme aspect ratio (e.g. 7000x10 padded into 640x384) must not round a side to 0 px
    resized = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    if mode == "crop":
        left, top = (resized.width - width) / 2, (resized.height - height) / 2
        return resized.crop((left, top, left + width, top + height))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
    return canvas


def first_frame_input(image: ImageLike, size: Optional[Tuple[int, int]] = None, mode: str = "crop") -> torch.Tensor:
    """The first frame of image-to-video -> VAE input [1, 3, 1, H, W] in [-1, 1]: resized to ``size`` = (width,
    height) keeping the aspect (:func:`resize_to`), then converted as the official app does."""
    return image_to_vae_input(resize_to(image, *size, mode=mode) if size else to_pil(image))


def image_to_vae_input(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [1, 3, 1, H, W] float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5), as the official)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    x = pixels.permute(2, 0, 1).to(torch.float32).div(255)
    return x.sub(0.5).div(0.5)[None, :, None]
