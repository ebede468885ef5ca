"""History geometry: which past latent frames a unit sees, at which pyramid level, and how many tokens that
makes. The sampler builds its DiT inputs from it and the memory model counts them from it, so both read one rule.

Shapes: B batch, C latent channels, T frames, h/w latent height and width at full resolution.
"""

from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .latents import PYRAMID_STAGES, SPATIAL_SCALE, TRAINED_LATENT_FRAMES
from .text.embeddings import TEXT_TOKENS


def per_frame(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a 2-D op to every frame of [B, C, T, H, W]."""
    b, c, t = x.shape[:3]
    frames = fn(x.permute(0, 2, 1, 3, 4).flatten(0, 1))
    return frames.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)


def halve(x: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=False) downsample to floor(h/2) x floor(w/2), per frame."""
    size = (x.shape[-2] // 2, x.shape[-1] // 2)
    return per_frame(x, lambda f: F.interpolate(f, size=size, mode="bilinear"))


def latent_pyramid(latents: torch.Tensor, stages: int) -> List[torch.Tensor]:
    """Clean latents -> one copy per stage, lowest resolution first (bilinear 1/2 per level, no rescale)."""
    levels = [latents]
    for _ in range(stages - 1):
        levels.append(halve(levels[-1]))
    return levels[::-1]


HistoryPlan = List[List[Tuple[int, int, int]]]  # per stage: clips as (level, first frame, end frame), oldest first


def history_plan(num_frames: int, stages: int) -> HistoryPlan:
    """Which frames of the history each stage sees, at which pyramid level (official ``generate`` history rule).

    The newest frame is taken at the stage's level; walking back, each older frame drops one level until level
    0, where all remaining older frames form one clip.
    """
    plan = []
    for stage in range(stages):
        clips = [(stage, num_frames - 1, num_frames)]
        level, used = stage, 1
        while used < num_frames:
            level = max(level - 1, 0)
            if level == 0:
                break
            used += 1
            clips.append((level, num_frames - used, num_frames - used + 1))
        if used < num_frames:
            clips.append((0, 0, num_frames - used))
        plan.append(clips[::-1])
    return plan


def history_clips(frames: torch.Tensor, stages: int) -> List[List[torch.Tensor]]:
    """History frames [B, C, T, h, w] -> per stage, the condition clips for the next unit, oldest first."""
    levels = latent_pyramid(frames, stages)
    return [[levels[level][:, :, start:end] for level, start, end in clips]
            for clips in history_plan(frames.shape[2], stages)]


def window_frames(num_frames: int, history_window: Optional[int]) -> List[int]:
    """Indices of the past frames a unit sees: all of them, or the first plus the newest ``history_window - 1``."""
    if history_window is None or num_frames <= history_window:
        return list(range(num_frames))
    return [0] + list(range(num_frames - history_window + 1, num_frames))


def check_history_window(history_window: Optional[int]) -> None:
    if history_window is not None and not 2 <= history_window <= TRAINED_LATENT_FRAMES - 1:
        raise ValueError(
            f"history_window {history_window} must be between 2 (the first frame and the newest) and "
            f"{TRAINED_LATENT_FRAMES - 1} (the checkpoints were trained on {TRAINED_LATENT_FRAMES} latent frames), "
            "or None for the whole history."
        )


def call_tokens(height: int, width: int, history_frames: int, stage: int, stages: int = PYRAMID_STAGES,
                patch_size: int = 2) -> List[int]:
    """Image tokens of each frame of one DiT call, oldest first (the current frame last): a unit with
    ``history_frames`` past frames at ``stage``, the history clips of :func:`history_plan`. ``height``, ``width``:
    the video's size in pixels."""
    h, w = height // SPATIAL_SCALE, width // SPATIAL_SCALE

    def frame_tokens(level: int) -> int:
        scale = 2 ** (stages - 1 - level)
        return (h // scale // patch_size) * (w // scale // patch_size)

    clips = history_plan(history_frames, stages)[stage] if history_frames else []
    return [frame_tokens(level) for level, start, end in clips for _ in range(end - start)] + [frame_tokens(stage)]


def max_sequence_length(height: int, width: int, history_frames: int, stages: int = PYRAMID_STAGES, patch_size: int = 2,
                        text_tokens: int = TEXT_TOKENS) -> int:
    """Tokens of the largest DiT call of a unit with ``history_frames`` past frames (its last stage): text, the
    history clips of :func:`history_plan` and the current frame."""
    return text_tokens + sum(call_tokens(height, width, history_frames, stages - 1, stages, patch_size))
