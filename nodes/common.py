"""Node logic that needs no ComfyUI: sizes, durations, T5 token windows, IMAGE <-> video tensors, model names.

Everything here is plain torch/Python so the fast test lane can check it without a ComfyUI install.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch

from ..pyramid_flow import latents as latent_utils
from ..pyramid_flow.loading import hub
from ..pyramid_flow.text.embeddings import TEXT_TOKENS

FPS = latent_utils.FPS
SIZE_STEP = latent_utils.RESOLUTION_MULTIPLE  # 64 = VAE 8 x pyramid 4 x patch 2
MAX_SIZE = 4096
T5_TOKENS = TEXT_TOKENS  # the official tokenizer_2/3 max_length
T5_EOS, T5_PAD = 1, 0
MAX_SECONDS = 20.0

# Known Hugging Face repos: folder name under models/pyramidflow/ -> repo id
HF_REPOS = {repo_id.split("/")[1]: repo_id for repo_id in hub.REPOS.values()}
VIDEO_DIT_FOLDERS = hub.VIDEO_DIT_FOLDERS
VAE_FOLDER = hub.VAE_FOLDER


def describe_duration(seconds: float) -> str:
    temp = latent_utils.temp_for_seconds(seconds)
    frames = latent_utils.frames_for_temp(temp)
    return f"{frames} frames = {frames / FPS:.2f} s at {FPS} fps ({temp} latent frames)"


def check_size(width: int, height: int) -> Optional[str]:
    """None when width/height can go through the pyramid, else the clear message of check_resolution."""
    try:
        latent_utils.check_resolution(width, height)
    except ValueError as err:
        return str(err)
    return None


def t5_window(token_ids: Sequence[int], length: int = T5_TOKENS) -> Tuple[List[int], int]:
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


def pad_embeddings(hidden: torch.Tensor, n: int, length: int = T5_TOKENS) -> Tuple[torch.Tensor, torch.Tensor]:
    """[1, n', D] hidden states of n real tokens -> ([1, length, D] zero-padded, int64 mask [1, length])."""
    hidden = hidden[:, :n]
    out = hidden.new_zeros((hidden.shape[0], length, hidden.shape[-1]))
    out[:, :n] = hidden
    mask = torch.zeros((hidden.shape[0], length), dtype=torch.int64)
    mask[:, :n] = 1
    return out, mask


def video_to_image(video: torch.Tensor) -> torch.Tensor:
    """VAE output [B, 3, F, H, W] in ~[-1, 1] -> ComfyUI IMAGE [B*F, H, W, 3] float32 in [0, 1]."""
    return ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1).flatten(0, 1)


def image_to_video(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [F, H, W, C] in [0, 1] -> VAE input [1, 3, F, H, W] in [-1, 1] (alpha dropped)."""
    return image[..., :3].float().permute(3, 0, 1, 2).unsqueeze(0) * 2.0 - 1.0


def encodable_frames(num_frames: int) -> int:
    """The causal VAE encodes 1 + 8k frames: the largest such count <= num_frames."""
    return 1 + 8 * ((num_frames - 1) // 8)


def check_image(image: torch.Tensor, what: str = "image") -> None:
    """A clear error for IMAGE inputs that cannot be used (wrong layout, empty, tiny, NaN)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"The {what} must be a ComfyUI IMAGE [frames, height, width, 3]; got {shape}.")
    if image.shape[0] == 0:
        raise ValueError(f"The {what} batch is empty: connect a node that outputs at least one image.")
    if min(image.shape[1], image.shape[2]) < 8:
        raise ValueError(f"The {what} is {image.shape[2]}x{image.shape[1]} pixels: it needs at least 8x8.")
    if not torch.isfinite(image).all():
        raise ValueError(f"The {what} contains NaN or infinite values.")


def first_frame_input(image: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """IMAGE [1, H, W, C] -> VAE input [1, 3, 1, height, width] in [-1, 1], aspect preserved ('crop' fills and
    centre-crops, 'pad' letterboxes), through the official app's PIL LANCZOS resize and uint8 -> [-1, 1] conversion
    (pyramid_flow.image)."""
    from ..pyramid_flow.image import image_to_vae_input, resize_to

    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return image_to_vae_input(resize_to(image[0, ..., :3].cpu(), width, height, mode=mode))


def stage_list(a: int, b: int, c: int) -> List[int]:
    return [int(a), int(b), int(c)]


def memory_estimate_dit(hidden: int, batch: int, tokens: int, dtype_size: int, layers_live: int = 1) -> int:
    """Activation bytes of one DiT call: about 24 [B, L, hidden] tensors alive in one block (qkv, MLP 4x, norms,
    residual) plus the latents and text of the call; attention through SDPA does not keep L x L scores."""
    return int(batch * tokens * hidden * dtype_size * 24 * layers_live)


def max_tokens(width: int, height: int, temp: int, text_tokens: int = T5_TOKENS, patch: int = 2) -> int:
    """Sequence length of the last, largest DiT call (an upper bound): the full-resolution current frame, the
    newest history frame at full and the next at half resolution, every older frame at quarter resolution,
    plus the text."""
    per_frame = (height // 8 // patch) * (width // 8 // patch)
    history = per_frame + per_frame // 4 + temp * max(1, per_frame // 16) if temp > 1 else 0
    return per_frame + history + text_tokens


def ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


MIN_TILE = 64


def smaller_settings(tile: int, window: int) -> Optional[Tuple[int, int]]:
    """VAE settings to retry with after out-of-memory: temporal window 1 first, then halve the tile (0 = untiled
    starts at 512) down to 64; None when nothing smaller is left."""
    if window > 1:
        return tile, 1
    if not tile:
        return 512, 1
    if tile > MIN_TILE:
        return max(MIN_TILE, tile // 2), 1
    return None
