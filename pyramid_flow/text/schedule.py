"""Prompt travel: a positive prompt per stretch of the video, switched at latent-frame (unit) boundaries.

A schedule is written as ``<seconds>: <prompt>`` entries, one per line or separated by `` / ``::

    0: a red panda on a log / 4: the panda jumps into the snow

A time maps to the unit whose frames hold it (:func:`pyramid_flow.latents.unit_at_seconds`); from that unit on the
new prompt conditions every DiT call (a hard switch: the history frames carry the motion across it). The
negative prompt stays one prompt for the whole video.
"""

import re
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, TypeVar

import torch

from ..latents import FPS, unit_at_seconds, video_frames_for
from .embeddings import TextEmbeddings

T = TypeVar("T")  # what a schedule entry carries: a prompt, or its embeddings

# An entry starts a line or follows " / ": a time (anything number-like, checked below), an optional "s", a colon.
_ENTRY = re.compile(r"(?:^|\n|\s/\s)\s*(-?\.?\d[\d.eE+-]*)\s*s?\s*:")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"Prompt schedule: '{text}' is not a time in seconds. Write entries as '<seconds>: <prompt>', "
                         "e.g. '0: a red panda / 4.5: the panda jumps'.") from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"Prompt schedule: the time {text} s is not a moment of the video; times count from 0 s.")
    return seconds


def parse_prompt_schedule(text: str) -> List[Tuple[float, str]]:
    """'0: a / 4: b' -> [(0.0, 'a'), (4.0, 'b')]; text without a leading time is one prompt from 0 s."""
    if not text.strip():
        raise ValueError("Prompt schedule is empty: give at least '0: <prompt>'.")
    matches = list(_ENTRY.finditer(text))
    if not matches or text[: matches[0].start()].strip():
        if matches:
            raise ValueError(
                f"Prompt schedule: the text before the first '<seconds>:' entry ({text[: matches[0].start()].strip()!r}) "
                "has no time. Start with '0: <prompt>'."
            )
        return [(0.0, text.strip())]
    entries = []
    for match, following in zip(matches, matches[1:] + [None]):
        seconds = _seconds(match.group(1))
        prompt = text[match.end() : following.start() if following else len(text)].strip()
        if not prompt:
            raise ValueError(f"Prompt schedule: the entry at {match.group(1)} s has no prompt.")
        entries.append((seconds, prompt))
    return entries


def video_seconds(latent_frames: int) -> float:
    return video_frames_for(latent_frames) / FPS


def check_schedule(entries: Sequence[Tuple[float, object]]) -> None:
    """Raise for a schedule that cannot be followed: empty, not starting at 0 s, times not increasing, or two
    entries in one latent frame (1/3 s)."""
    if not entries:
        raise ValueError("Prompt schedule is empty: give at least '0: <prompt>'.")
    if entries[0][0] != 0:
        raise ValueError(f"Prompt schedule starts at {entries[0][0]:g} s: add an entry for 0 s ('0: <prompt>').")
    for (seconds, _), (before, _) in zip(entries[1:], entries[:-1]):
        if seconds <= before:
            raise ValueError(f"Prompt schedule times must increase: {seconds:g} s comes after {before:g} s.")
        if unit_at_seconds(seconds) == unit_at_seconds(before):
            raise ValueError(
                f"Prompt schedule entries at {before:g} s and {seconds:g} s fall in the same latent frame "
                f"(unit {unit_at_seconds(seconds)}, 1/3 s long); space them further apart."
            )


def schedule_units(entries: Sequence[Tuple[float, T]], latent_frames: int) -> List[Tuple[int, T]]:
    """(seconds, prompt) entries -> (first unit, prompt), checked by :func:`check_schedule`. Entries at or after
    the end of a video of ``latent_frames`` latent frames are dropped."""
    check_schedule(entries)
    late = [seconds for seconds, _ in entries if unit_at_seconds(seconds) >= latent_frames]
    if late:
        warnings.warn(f"Prompt schedule: the entries at {', '.join(f'{s:g}' for s in late)} s start after the video "
                      f"ends ({latent_frames} latent frames, {video_seconds(latent_frames):.2f} s); they are not used.",
                      stacklevel=3)
    return [(unit_at_seconds(seconds), prompt) for seconds, prompt in entries if unit_at_seconds(seconds) < latent_frames]


@dataclass(frozen=True)
class PromptSchedule:
    """Positive conditioning per unit: ``entries`` (first unit, embeddings), sorted by unit, the first at unit 0.

    A unit uses the last entry starting at or before it.
    """

    entries: Tuple[Tuple[int, TextEmbeddings], ...]

    def __post_init__(self):
        units = [unit for unit, _ in self.entries]
        if not units or units[0] != 0 or units != sorted(set(units)):
            raise ValueError(f"a prompt schedule needs strictly increasing first units starting at 0, got {units}")

    @classmethod
    def constant(cls, embeddings: TextEmbeddings) -> "PromptSchedule":
        return cls(((0, embeddings),))

    @classmethod
    def of(cls, cond: "TextEmbeddings | PromptSchedule") -> "PromptSchedule":
        return cond if isinstance(cond, PromptSchedule) else cls.constant(cond)

    def at(self, unit: int) -> TextEmbeddings:
        chosen = self.entries[0][1]
        for first, embeddings in self.entries:
            if first <= unit:
                chosen = embeddings
        return chosen

    @property
    def batch(self) -> int:
        return self.entries[0][1].prompt_embeds.shape[0]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "PromptSchedule":
        return PromptSchedule(tuple((unit, emb.to(device=device, dtype=dtype)) for unit, emb in self.entries))
