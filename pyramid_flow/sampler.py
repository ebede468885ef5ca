"""The autoregressive pyramidal sampler: text-to-video (and text-to-image: 1 latent frame), image-to-video, and video
extension, on normalised latents.

One *unit* is one latent frame. Each unit runs the spatial pyramid (lowest resolution first, nearest x2 upsample
and correlated renoise between stages) conditioned on a temporal pyramid of the frames before it (the *history*).
A video is its history of clean latents, so extending a video is running more units against it; units are
numbered by their frame in the final video, and the default noise is keyed by that number, so a longer single run
and a run extended later give the same frames.

``history_window`` bounds the history: at most K past frames, the first (the anchor an image-to-video user cares
about) and the K - 1 most recent, which keeps the token count and memory of every DiT call flat however long the
video grows. The DiT numbers frames by their place in the sequence, so temporal positions stay within 0..K.

Shapes: B batch, C latent channels, T frames, h/w latent height and width at full resolution.
"""

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .cfg_devices import CfgOnTwoDevices
from .history import check_history_window, halve, history_clips, per_frame, window_frames
from .latents import LATENT_CHANNELS, SPATIAL_SCALE, TRAINED_LATENT_FRAMES, normalize
from .memory import DiTShape, dit_activation_bytes
from .noise import NoiseSource, draw_posterior
from .parallel import ParallelContext, splits_cfg
from .scheduler import PyramidFlowScheduler
from .text.embeddings import TextEmbeddings
from .text.schedule import PromptSchedule
from .variants import Variant

SUGGESTED_HISTORY_WINDOW = 16  # history frames suggested for videos beyond the trained length (about half of it)

Steps = Union[Sequence[int], int]
Conditioning = Union[TextEmbeddings, PromptSchedule]


@dataclass
class StepInfo:
    """What a progress callback sees after every DiT step."""

    unit: int  # the latent frame being generated (its index in the whole video)
    latent_frames: int  # latent frames of the whole video
    stage: int
    step: int
    steps_in_stage: int
    done: int  # DiT steps finished so far in this run
    total: int
    timestep: float
    sample: torch.Tensor  # the latent fed to this step [B, C, 1, h, w]
    velocity: torch.Tensor  # the guided prediction
    latent: torch.Tensor  # the latent after this step


StepCallback = Callable[[StepInfo], None]
FrameCallback = Callable[[int, torch.Tensor], None]  # (unit, its final latent [B, C, 1, h, w]) as each is finished


def stage_steps(steps: Steps, stages: int) -> List[int]:
    """An int or a per-stage list -> one step count per stage."""
    steps = [steps] * stages if isinstance(steps, int) else list(steps)
    if len(steps) != stages or min(steps) < 1:
        raise ValueError(f"steps must be {stages} positive integers (one per pyramid stage), got {steps}")
    return steps


def count_dit_steps(new_units: int, first_frame_steps: Steps, video_steps: Steps, stages: int, from_scratch: bool) -> int:
    """DiT calls of a run that generates ``new_units`` frames (the progress bar's total); ``from_scratch``: the
    first of them has no history and runs ``first_frame_steps``."""
    first = sum(stage_steps(first_frame_steps, stages)) if from_scratch and new_units else 0
    return first + (new_units - (1 if first else 0)) * sum(stage_steps(video_steps, stages))


def noise_pyramid_bottom(noise: torch.Tensor, stages: int) -> torch.Tensor:
    """Full-resolution noise -> the stage-0 noise: bilinear 1/2 and x2, once per lower stage (keeps unit variance)."""
    for _ in range(stages - 1):
        noise = halve(noise) * 2
    return noise


@dataclass
class _Run:
    """State of one sampling run, shared by all its units."""

    dit: torch.nn.Module
    scheduler: PyramidFlowScheduler
    noise: NoiseSource
    prompts: PromptSchedule  # positive conditioning per unit, on the run's device and dtype
    uncond: Optional[TextEmbeddings]  # the negative prompt (None without CFG)
    callback: Optional[StepCallback]
    on_frame: Optional[FrameCallback]
    latent_frames: int
    total: int
    history_window: Optional[int]
    parallel: Optional[ParallelContext] = None  # CFG halves and sequence shares over ranks (pyramid_flow.parallel)
    devices: Optional[CfgOnTwoDevices] = None  # the positive CFG half on a second device (pyramid_flow.cfg_devices)
    done: int = 0
    _text: Dict[int, TextEmbeddings] = field(default_factory=dict)

    @property
    def cfg(self) -> bool:
        return self.uncond is not None

    @property
    def doubled(self) -> bool:
        """Whether one DiT call carries both CFG halves (batch 2); with CFG parallel each rank runs its half, with a
        second device each device its half."""
        return self.cfg and not splits_cfg(self.parallel) and self.devices is None

    @property
    def runs_negative_half(self) -> bool:
        """Whether this process's DiT calls carry the negative half alone (CFG split over ranks or devices)."""
        return self.cfg and not self.doubled and (self.devices is not None or self.parallel.cfg_rank == 0)

    @property
    def sequence_split(self) -> Dict[str, object]:
        """The DiT's ``sequence_split`` argument under sequence parallel (none otherwise)."""
        share = None if self.parallel is None else self.parallel.sequence
        return {} if share is None else {"sequence_split": share}

    def text(self, unit: int) -> TextEmbeddings:
        """The DiT's text input for ``unit``: [negative; positive] with CFG, this rank's or this device's half with
        CFG split, else the positive prompt alone."""
        cond = self.prompts.at(unit)
        key = id(cond)
        if key not in self._text:
            if self.doubled:
                self._text[key] = TextEmbeddings.cat([self.uncond, cond])
            else:
                self._text[key] = self.uncond if self.runs_negative_half else cond
        return self._text[key]

    def predict(self, unit: int, text: TextEmbeddings, clips: List[torch.Tensor], sample: torch.Tensor,
                timestep: torch.Tensor, guidance: float) -> torch.Tensor:
        model_input = torch.cat([sample] * 2) if self.doubled else sample
        timestep = timestep.expand(model_input.shape[0]).to(model_input.dtype)
        positive = (self.devices.start(self.prompts.at(unit), clips, model_input, timestep)
                    if self.cfg and self.devices is not None else None)
        velocity = self.dit(clips + [model_input], text.prompt_embeds, text.attention_mask, text.pooled, timestep,
                            **self.sequence_split)
        if not self.cfg:
            return velocity
        if positive is not None:
            uncond, cond = velocity, self.devices.result(positive, velocity.device)
        elif self.doubled:
            uncond, cond = velocity.chunk(2)
        else:
            uncond, cond = self.parallel.gather_halves(velocity)
        return uncond + guidance * (cond - uncond)

    def generate_unit(self, unit: int, noise: torch.Tensor, history: List[List[torch.Tensor]], steps: List[int],
                      guidance: float) -> torch.Tensor:
        """One latent frame through the stages, from its stage-0 noise; returns the full-resolution result
        [B, C, 1, h, w]."""
        latent, text = noise, self.text(unit)
        for stage in range(self.scheduler.stages):
            grid = self.scheduler.stage_grid(steps[stage], stage)
            if stage > 0:
                latent = per_frame(latent, lambda f: F.interpolate(f, scale_factor=2, mode="nearest"))
                renoise = self.scheduler.renoise(stage)
                block_noise = self.noise.block_noise(latent.shape, unit, stage, latent.device, latent.dtype)
                latent = renoise.alpha * latent + renoise.beta * block_noise
            clips = [torch.cat([c] * 2) if self.doubled else c for c in history[stage]] if history else []
            for k, t in enumerate(grid.timesteps):
                velocity = self.predict(unit, text, clips, latent, t, guidance)
                sample, latent = latent, self.scheduler.step(velocity, latent, grid.sigmas[k], grid.sigmas[k + 1])
                self.done += 1
                if self.callback is not None:
                    self.callback(StepInfo(unit, self.latent_frames, stage, k, steps[stage], self.done, self.total,
                                           t.item(), sample, velocity, latent))
        return latent

    def finished(self, unit: int, frame: torch.Tensor) -> None:
        if self.on_frame is not None:
            self.on_frame(unit, frame)

    def continue_video(self, frames: List[torch.Tensor], noise: torch.Tensor, steps: List[int],
                       guidance: float) -> torch.Tensor:
        """Append one unit per frame of ``noise`` (stage-0 noise [B, C, N, h0, w0]), each conditioned on the frames
        before it (within the history window). Returns all frames [B, C, len(frames) + N, h, w]."""
        for k in range(noise.shape[2]):
            unit = len(frames)
            past = torch.cat([frames[i] for i in window_frames(unit, self.history_window)], dim=2)
            history = history_clips(past, self.scheduler.stages)
            frames.append(self.generate_unit(unit, noise[:, :, k : k + 1], history, steps, guidance))
            self.finished(unit, frames[-1])
        return torch.cat(frames, dim=2)


class PyramidSampler:
    """Text-to-video, image-to-video and extension on one DiT, with one noise source, on normalised latents.

    ``callback`` is called with a :class:`StepInfo` after every DiT step (raise from it to stop within one step);
    ``frame_callback(unit, latent)`` with each frame this run makes, as soon as it is final (to keep it: a stopped
    run continues from its finished frames with :meth:`extend`, see :mod:`pyramid_flow.resume`).
    CFG is on iff ``guidance_scale > 0`` (the official switch), with the batch order [negative; positive]. ``cond``
    is one :class:`TextEmbeddings` or a :class:`PromptSchedule` (prompt travel); the negative prompt is one.
    """

    def __init__(
        self,
        dit: torch.nn.Module,
        noise: NoiseSource,
        device: torch.device,
        dtype: torch.dtype,
        scheduler: Optional[PyramidFlowScheduler] = None,
        callback: Optional[StepCallback] = None,
        frame_callback: Optional[FrameCallback] = None,
        parallel: Optional[ParallelContext] = None,
        cfg_devices: Optional[CfgOnTwoDevices] = None,
    ):
        self.dit, self.noise, self.device, self.dtype = dit, noise, device, dtype
        self.cfg_devices = cfg_devices
        self.scheduler = scheduler or PyramidFlowScheduler()
        self.callback, self.frame_callback, self.parallel = callback, frame_callback, parallel

    def _start(self, cond: Conditioning, uncond: Optional[TextEmbeddings], guidance_scale: float, latent_frames: int,
               total: int, history_window: Optional[int], size: Tuple[int, int]) -> _Run:
        """``size``: (height, width) in pixels."""
        check_history_window(history_window)
        if guidance_scale > 0 and uncond is None:
            raise ValueError("guidance_scale > 0 needs negative-prompt embeddings (uncond)")
        if history_window is None and latent_frames > TRAINED_LATENT_FRAMES:
            batch = PromptSchedule.of(cond).batch * (2 if guidance_scale > 0 else 1)
            warnings.warn(self._long_history_message(latent_frames, size, batch), stacklevel=3)
        prompts = PromptSchedule.of(cond).to(device=self.device, dtype=self.dtype)
        uncond = uncond.to(device=self.device, dtype=self.dtype) if guidance_scale > 0 else None
        text_dim, pooled_dim = getattr(self.dit, "text_dims", (None, None))  # None: a stand-in model (tests)
        for embeddings in [emb for _, emb in prompts.entries] + ([uncond] if uncond is not None else []):
            embeddings.validate(text_dim=text_dim, pooled_dim=pooled_dim)
        return _Run(self.dit, self.scheduler, self.noise, prompts, uncond, self.callback, self.frame_callback,
                    latent_frames, total, history_window, self.parallel, self.cfg_devices)

    def _long_history_message(self, latent_frames: int, size: Tuple[int, int], batch: int) -> str:
        message = (
            f"{latent_frames} latent frames with the whole history exceed the {TRAINED_LATENT_FRAMES} the checkpoints were "
            "trained on: temporal positions leave the trained range and every DiT call grows with the video. Set "
            f"history_window (e.g. {SUGGESTED_HISTORY_WINDOW}) to bound both.")
        shape = DiTShape.of_model(self.dit)
        if shape is None:  # a stand-in model without the DiT's layers (tests)
            return message
        full = dit_activation_bytes(shape, *size, latent_frames - 1, batch, self.dtype)
        windowed = dit_activation_bytes(shape, *size, latent_frames - 1, batch, self.dtype, SUGGESTED_HISTORY_WINDOW)
        return (f"{message} The last frame needs about {full / 2**30:.1f} GiB of DiT activations; with "
                f"history_window {SUGGESTED_HISTORY_WINDOW}, {windowed / 2**30:.1f} GiB for any length.")

    def _latent_noise(self, batch: int, first_unit: int, count: int, height: int, width: int) -> torch.Tensor:
        """Stage-0 noise [B, C, count, h0, w0] of units first_unit .. first_unit + count - 1."""
        shape = (batch, LATENT_CHANNELS, count, height // SPATIAL_SCALE, width // SPATIAL_SCALE)
        return noise_pyramid_bottom(self.noise.latents(shape, first_unit, self.device, self.dtype), self.scheduler.stages)

    @torch.no_grad()
    def text_to_video(
        self,
        cond: Conditioning,
        uncond: Optional[TextEmbeddings],
        *,
        height: int,
        width: int,
        latent_frames: int,
        first_frame_steps: Steps,
        video_steps: Steps,
        guidance_scale: float,
        video_guidance_scale: float,
        history_window: Optional[int] = None,
    ) -> torch.Tensor:
        """``latent_frames`` (1: an image) -> normalised latents [B, 16, latent_frames, h, w]. Unit 0 uses
        ``first_frame_steps`` and ``guidance_scale``, later units ``video_steps`` and ``video_guidance_scale``."""
        stages = self.scheduler.stages
        first_frame_steps, video_steps = stage_steps(first_frame_steps, stages), stage_steps(video_steps, stages)
        batch = PromptSchedule.of(cond).batch
        noise = self._latent_noise(batch, 0, latent_frames, height, width)
        total = count_dit_steps(latent_frames, first_frame_steps, video_steps, stages, from_scratch=True)
        run = self._start(cond, uncond, guidance_scale, latent_frames, total, history_window, (height, width))
        first = run.generate_unit(0, noise[:, :, :1], [], first_frame_steps, guidance_scale)
        run.finished(0, first)
        return run.continue_video([first], noise[:, :, 1:], video_steps, video_guidance_scale)

    @torch.no_grad()
    def image_to_video(
        self,
        cond: Conditioning,
        uncond: Optional[TextEmbeddings],
        *,
        image_moments: torch.Tensor,
        variant: Variant,
        latent_frames: int,
        steps: Steps,
        guidance_scale: float,
        video_guidance_scale: float,
        history_window: Optional[int] = None,
    ) -> torch.Tensor:
        """The image's VAE moments [B, 32, 1, h, w] (mean ‖ logvar, VAE space) -> normalised latents
        [B, 16, latent_frames, h, w]; ``latent_frames`` counts the image.

        Draws in the official order: the video noise first, then the image's posterior sample (normalised with
        the variant's image constants) becomes frame 0. Every generated unit uses ``video_guidance_scale``.
        """
        height, width = image_moments.shape[-2] * SPATIAL_SCALE, image_moments.shape[-1] * SPATIAL_SCALE
        batch = PromptSchedule.of(cond).batch
        noise = self._latent_noise(batch, 1, latent_frames - 1, height, width)
        first = normalize(draw_posterior(self.noise, image_moments.to(device=self.device, dtype=self.dtype)), variant)
        if self.frame_callback is not None:
            self.frame_callback(0, first)
        return self._extend(cond, uncond, first, noise, steps, guidance_scale, video_guidance_scale, history_window)

    @torch.no_grad()
    def extend(
        self,
        cond: Conditioning,
        uncond: Optional[TextEmbeddings],
        *,
        history: torch.Tensor,
        new_latent_frames: int,
        steps: Steps,
        guidance_scale: float,
        video_guidance_scale: float,
        history_window: Optional[int] = None,
    ) -> torch.Tensor:
        """Continue a video: normalised latents [B, 16, T0, h, w] -> [B, 16, T0 + new_latent_frames, h, w], the given frames
        unchanged. Every new unit uses ``steps`` and ``video_guidance_scale``; with the default noise, unit u draws
        what it would draw in a single longer run. A one-frame history is image-to-video from a given latent."""
        height, width = history.shape[-2] * SPATIAL_SCALE, history.shape[-1] * SPATIAL_SCALE
        check_history(history, PromptSchedule.of(cond).batch)
        noise = self._latent_noise(history.shape[0], history.shape[2], new_latent_frames, height, width)
        history = history.to(device=self.device, dtype=self.dtype)
        return self._extend(cond, uncond, history, noise, steps, guidance_scale, video_guidance_scale, history_window)

    def _extend(self, cond, uncond, history: torch.Tensor, noise: torch.Tensor, steps: Steps, guidance_scale: float,
                video_guidance_scale: float, history_window: Optional[int]) -> torch.Tensor:
        steps = stage_steps(steps, self.scheduler.stages)
        new_units = noise.shape[2]
        total = count_dit_steps(new_units, steps, steps, self.scheduler.stages, from_scratch=False)
        size = (history.shape[-2] * SPATIAL_SCALE, history.shape[-1] * SPATIAL_SCALE)
        run = self._start(cond, uncond, guidance_scale, history.shape[2] + new_units, total, history_window, size)
        return run.continue_video(list(history.split(1, dim=2)), noise, steps, video_guidance_scale)


def check_history(history: torch.Tensor, batch: int) -> None:
    """A clear error for a history that cannot condition the sampler."""
    if history.dim() != 5 or history.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"The video to continue must be a latent [B, {LATENT_CHANNELS}, T, h, w]; got "
                         f"{list(history.shape)}.")
    if history.shape[0] != batch:
        raise ValueError(f"The video to continue has batch {history.shape[0]} but the prompt batch is {batch}.")
