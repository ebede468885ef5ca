"""The autoregressive pyramidal sampler: text-to-video (and text-to-image, temp=1) and image-to-video.

Works on normalised latents. One *unit* is one latent frame; each unit runs the three-stage spatial pyramid
(lowest resolution first, nearest x2 upsample + correlated renoise between stages) conditioned on a temporal
pyramid of the frames generated before it.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .scheduler import PyramidFlowScheduler
from .text.embeddings import TextEmbeddings
from .vae.model import posterior_sample

NUM_STAGES = 3
LATENT_CHANNELS = 16


@dataclass
class StepInfo:
    """What a progress callback sees after every DiT step."""

    unit: int  # index of the latent frame being generated
    num_units: int
    stage: int
    step: int
    steps_in_stage: int
    done: int  # DiT steps finished so far, over the whole run
    total: int
    timestep: float
    sample: torch.Tensor  # the latent fed to this step [B, C, 1, h, w]
    velocity: torch.Tensor  # the guided prediction
    latent: torch.Tensor  # the latent after this step


StepCallback = Callable[[StepInfo], None]


def stage_steps(steps: Sequence[int] | int) -> List[int]:
    """An int or a per-stage list -> one step count per stage."""
    steps = [steps] * NUM_STAGES if isinstance(steps, int) else list(steps)
    if len(steps) != NUM_STAGES or min(steps) < 1:
        raise ValueError(f"steps must be {NUM_STAGES} positive integers (one per pyramid stage), got {steps}")
    return steps


def count_dit_steps(temp: int, first_frame_steps: Sequence[int] | int, video_steps: Sequence[int] | int, i2v: bool = False) -> int:
    """DiT calls of a whole run (the progress bar's total)."""
    if i2v:
        return (temp - 1) * sum(stage_steps(video_steps))
    return sum(stage_steps(first_frame_steps)) + (temp - 1) * sum(stage_steps(video_steps))


def _per_frame(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a 2-D op to every frame of [B, C, T, H, W]."""
    b, c, t = x.shape[:3]
    frames = fn(x.permute(0, 2, 1, 3, 4).flatten(0, 1))
    return frames.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)


def halve(x: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=False) downsample to floor(h/2) x floor(w/2), per frame."""
    size = (x.shape[-2] // 2, x.shape[-1] // 2)
    return _per_frame(x, lambda f: F.interpolate(f, size=size, mode="bilinear"))


def noise_pyramid_bottom(noise: torch.Tensor) -> torch.Tensor:
    """Full-resolution noise -> the stage-0 noise: bilinear 1/2 and x2, once per lower stage (keeps unit variance)."""
    for _ in range(NUM_STAGES - 1):
        noise = halve(noise) * 2
    return noise


def latent_pyramid(latents: torch.Tensor) -> List[torch.Tensor]:
    """Clean latents -> [1/4, 1/2, full] resolution copies (bilinear, no rescale)."""
    levels = [latents]
    for _ in range(NUM_STAGES - 1):
        levels.append(halve(levels[-1]))
    return levels[::-1]


def history_clips(generated: List[torch.Tensor]) -> List[List[torch.Tensor]]:
    """Per stage, the condition clips for the next unit, oldest first.

    The newest frame is taken at the stage's level; walking back, each older frame drops one level until level 0,
    where all remaining older frames form one clip.
    """
    levels = latent_pyramid(torch.cat(generated, dim=2))
    num_frames = len(generated)
    per_stage = []
    for stage in range(NUM_STAGES):
        clips = [levels[stage][:, :, -1:]]
        level, used = stage, 1
        while used < num_frames:
            level = max(level - 1, 0)
            if level == 0:
                break
            used += 1
            clips.append(levels[level][:, :, -used : num_frames - used + 1])
        if level == 0 and used < num_frames:
            clips.append(levels[0][:, :, : num_frames - used])
        per_stage.append(clips[::-1])
    return per_stage


@dataclass
class _Run:
    """State of one sampling run, shared by all its units."""

    dit: torch.nn.Module
    scheduler: PyramidFlowScheduler
    text: TextEmbeddings  # CFG-ordered [negative; positive] (or positive only without CFG)
    noise: object
    cfg: bool
    callback: Optional[StepCallback]
    num_units: int
    total: int
    done: int = 0

    def predict(self, clips: List[torch.Tensor], sample: torch.Tensor, timestep: torch.Tensor, guidance: float) -> torch.Tensor:
        model_input = torch.cat([sample] * 2) if self.cfg else sample
        timestep = timestep.expand(model_input.shape[0]).to(model_input.dtype)
        velocity = self.dit(clips + [model_input], self.text.prompt_embeds, self.text.attention_mask, self.text.pooled, timestep)
        if not self.cfg:
            return velocity
        uncond, cond = velocity.chunk(2)
        return uncond + guidance * (cond - uncond)

    def generate_unit(self, unit: int, noise: torch.Tensor, history: List[List[torch.Tensor]], steps: List[int], guidance: float) -> torch.Tensor:
        """One latent frame through the 3 stages; returns the full-resolution result [B, C, 1, H, W]."""
        latent = noise
        for stage in range(NUM_STAGES):
            grid = self.scheduler.stage_grid(steps[stage], stage)
            if stage > 0:
                latent = _per_frame(latent, lambda f: F.interpolate(f, scale_factor=2, mode="nearest"))
                renoise = self.scheduler.renoise(stage)
                block_noise = self.noise.block_noise(latent.shape, latent.device, latent.dtype)
                latent = renoise.alpha * latent + renoise.beta * block_noise
            clips = [torch.cat([c] * 2) if self.cfg else c for c in history[stage]] if history else []
            for k, t in enumerate(grid.timesteps):
                velocity = self.predict(clips, latent, t, guidance)
                sample, latent = latent, self.scheduler.step(velocity, latent, grid.sigmas[k], grid.sigmas[k + 1])
                self.done += 1
                if self.callback is not None:
                    self.callback(StepInfo(unit, self.num_units, stage, k, steps[stage], self.done, self.total, t.item(), sample, velocity, latent))
        return latent

    def continue_video(self, generated: List[torch.Tensor], noise_frames: torch.Tensor, steps: List[int], guidance: float) -> torch.Tensor:
        """Generate units len(generated) .. num_units-1, each conditioned on the frames before it; unit u starts from
        ``noise_frames[:, :, u - 1]``. Returns all frames [B, C, num_units, H, W]."""
        for unit in range(len(generated), self.num_units):
            history = history_clips(generated)
            generated.append(self.generate_unit(unit, noise_frames[:, :, unit - 1 : unit], history, steps, guidance))
        return torch.cat(generated, dim=2)


def draw_latent_noise(noise, batch: int, temp: int, height: int, width: int, device, dtype) -> torch.Tensor:
    """The full-resolution latent noise of a run [B, 16, temp, H/8, W/8] (always the run's first draw)."""
    return noise.latents((batch, LATENT_CHANNELS, temp, height // 8, width // 8), device, dtype)


def draw_posterior_sample(noise, moments: torch.Tensor) -> torch.Tensor:
    """A VAE posterior sample [B, C, T, h, w] from moments [B, 2C, T, h, w], its noise drawn from ``noise`` (the
    image-to-video run's second draw, after the latent noise)."""
    mean = moments[:, : moments.shape[1] // 2]
    return posterior_sample(moments, noise.posterior(mean.shape, mean.device, mean.dtype))


class PyramidSampler:
    """Text-to-video and image-to-video on one DiT, with one noise source, on normalised latents.

    ``callback`` is called with a :class:`StepInfo` after every DiT step (raise from it to stop within one step).
    CFG is on iff ``guidance_scale > 0`` (the official switch), with the batch order [negative; positive].
    """

    def __init__(
        self,
        dit: torch.nn.Module,
        noise,
        device: torch.device,
        dtype: torch.dtype,
        scheduler: Optional[PyramidFlowScheduler] = None,
        callback: Optional[StepCallback] = None,
    ):
        self.dit, self.noise, self.device, self.dtype = dit, noise, device, dtype
        self.scheduler = scheduler or PyramidFlowScheduler()
        self.callback = callback

    def _start(self, cond: TextEmbeddings, uncond: Optional[TextEmbeddings], guidance_scale: float, temp: int, total: int) -> _Run:
        cfg = guidance_scale > 0
        if cfg:
            if uncond is None:
                raise ValueError("guidance_scale > 0 needs negative-prompt embeddings (uncond)")
            cond = TextEmbeddings.cat([uncond, cond])
        text = cond.to(device=self.device, dtype=self.dtype)
        return _Run(self.dit, self.scheduler, text, self.noise, cfg, self.callback, temp, total)

    @torch.no_grad()
    def text_to_video(
        self,
        cond: TextEmbeddings,
        uncond: Optional[TextEmbeddings],
        *,
        height: int,
        width: int,
        temp: int,
        first_frame_steps: Sequence[int] | int,
        video_steps: Sequence[int] | int,
        guidance_scale: float,
        video_guidance_scale: float,
    ) -> torch.Tensor:
        """temp latent frames (temp=1: an image) -> normalised latents [B, 16, temp, H/8, W/8]. Unit 0 uses
        ``guidance_scale``, later units ``video_guidance_scale``; unit u starts from noise frame u."""
        first_frame_steps, video_steps = stage_steps(first_frame_steps), stage_steps(video_steps)
        batch = cond.prompt_embeds.shape[0]
        noise = noise_pyramid_bottom(draw_latent_noise(self.noise, batch, temp, height, width, self.device, self.dtype))
        run = self._start(cond, uncond, guidance_scale, temp, count_dit_steps(temp, first_frame_steps, video_steps))
        first = run.generate_unit(0, noise[:, :, :1], [], first_frame_steps, guidance_scale)
        return run.continue_video([first], noise[:, :, 1:], video_steps, video_guidance_scale)

    @torch.no_grad()
    def image_to_video(
        self,
        cond: TextEmbeddings,
        uncond: Optional[TextEmbeddings],
        *,
        image_latent: torch.Tensor,
        temp: int,
        steps: Sequence[int] | int,
        guidance_scale: float,
        video_guidance_scale: float,
        initial_noise: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """A normalised first-frame latent [B, 16, 1, h, w] -> [B, 16, temp, h, w]; ``temp`` counts the image.

        Every generated unit uses ``video_guidance_scale``; unit u starts from noise frame u-1 (the last noise
        frame is unused, as in the official code). ``initial_noise``: the latent noise when the caller already
        drew it (the official order draws it before the image posterior); drawn here otherwise.
        """
        steps = stage_steps(steps)
        height, width = image_latent.shape[-2] * 8, image_latent.shape[-1] * 8
        if initial_noise is None:
            initial_noise = draw_latent_noise(self.noise, cond.prompt_embeds.shape[0], temp, height, width, self.device, self.dtype)
        noise = noise_pyramid_bottom(initial_noise)
        run = self._start(cond, uncond, guidance_scale, temp, count_dit_steps(temp, steps, steps, i2v=True))
        first = image_latent.to(device=self.device, dtype=self.dtype)
        return run.continue_video([first], noise[:, :, :-1], steps, video_guidance_scale)
