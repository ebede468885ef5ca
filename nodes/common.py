"""Node logic that needs no ComfyUI: input checks, durations, T5 token windows, VAE output -> IMAGE.

Everything here is plain torch/Python so the fast test lane can check it without a ComfyUI install.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..pyramid_flow import latents as latent_utils
from ..pyramid_flow.text.embeddings import TEXT_TOKENS

MAX_SIZE = 4096
MAX_SECONDS = 120.0
T5_EOS, T5_PAD = 1, 0


def check_finite(inputs: Dict[str, object]) -> None:
    """Every float input must be a number: NaN and infinity pass ComfyUI's min/max checks (comparisons with NaN are
    false), so they are refused here, naming the input."""
    for name, value in inputs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"The input '{name}' is {value}: it must be a finite number. Type a value into the "
                             "widget (or fix the node that feeds it).")


def describe_duration(seconds: float) -> str:
    latent_frames = latent_utils.latent_frames_for_seconds(seconds)
    frames = latent_utils.video_frames_for(latent_frames)
    return f"{frames} frames = {frames / latent_utils.FPS:.2f} s at {latent_utils.FPS} fps ({latent_frames} latent frames)"


def check_size(width: int, height: int, source: Optional[str] = None) -> None:
    """Raise the clear size error of the library; ``source`` names where the size came from when it is not the
    node's own width/height widgets (e.g. an image latent), and the message then points at the node that resizes."""
    try:
        latent_utils.check_resolution(width, height, source)
    except ValueError as err:
        if source is None:
            raise
        raise ValueError(f"{err} Pyramid Flow Image To Video resizes an image to the video size.") from err


def t5_window(token_ids: Sequence[int], length: int = TEXT_TOKENS) -> Tuple[List[int], int]:
    """Real T5 ids (EOS included, padding dropped) cut to ``length`` like HF truncation (the last kept id is EOS).

    Returns (ids, n) with ``len(ids) == n <= length``; the caller pads to ``length`` and masks n real tokens.
    """
    ids = list(token_ids)
    if T5_EOS in ids:
        ids = ids[: ids.index(T5_EOS)]
    else:
        while ids and ids[-1] == T5_PAD:
            ids.pop()
    ids = ids[: length - 1] + [T5_EOS]
    return ids, len(ids)


def pad_embeddings(hidden: torch.Tensor, n: int, length: int = TEXT_TOKENS) -> Tuple[torch.Tensor, torch.Tensor]:
    """[1, n', D] hidden states of n real tokens -> ([1, length, D] zero-padded, int64 mask [1, length])."""
    hidden = hidden[:, :n]
    out = hidden.new_zeros((hidden.shape[0], length, hidden.shape[-1]))
    out[:, :n] = hidden
    mask = torch.zeros((hidden.shape[0], length), dtype=torch.int64)
    mask[:, :n] = 1
    return out, mask


def video_to_image(video: torch.Tensor) -> torch.Tensor:
    """VAE output [B, 3, F, H, W] in ~[-1, 1] -> ComfyUI IMAGE [B*F, H, W, 3] float32 in [0, 1].

    Works in place on a float32 ``video`` (do not use it afterwards): a long video is gigabytes, so no temporary
    copies; in the VAE's channels_last_3d layout the final permute is a view.
    """
    video = video.float()
    return video.add_(1.0).div_(2.0).clamp_(0.0, 1.0).permute(0, 2, 3, 4, 1).flatten(0, 1)


def check_image(image: torch.Tensor, name: str = "image") -> None:
    """A clear error for an IMAGE input ``name`` that cannot be used (wrong layout, empty, tiny, NaN)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"The input '{name}' must be a ComfyUI IMAGE [frames, height, width, 3]; got {shape}.")
    if image.shape[0] == 0:
        raise ValueError(f"The input '{name}' is an empty batch: connect a node that outputs at least one image.")
    if min(image.shape[1], image.shape[2]) < 8:
        raise ValueError(f"The input '{name}' is {image.shape[2]}x{image.shape[1]} pixels; it needs at least 8x8.")
    if not torch.isfinite(image).all():
        raise ValueError(f"The input '{name}' contains NaN or infinite values.")
