"""The steps of one run, each written once and called by both the command line (through
:class:`~pyramid_flow.pipeline.PyramidFlowPipeline`) and the ComfyUI nodes: check the request, encode the prompts
(or a prompt schedule), build the noise and the sampler and sample, turn frames into history, and encode and
decode with the VAE.

A step that runs a model takes its :class:`~pyramid_flow.placement.Placement` (how the model reaches its device,
asked with the memory model's estimate) and a progress callback, which may raise to interrupt. The callers keep
only their own types, placement and user interface.

Frames are float [F, H, W, 3] in [0, 1] (ComfyUI's IMAGE layout); latents are normalised (the DiT's space) unless
a name says VAE space. B batch, T latent frames, h/w latent height and width.
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .cfg_devices import CfgOnTwoDevices
from .dit.compile import compiled_blocks
from .image import ImageLike, first_frame_input, resize_to
from .latents import (LATENT_CHANNELS, PYRAMID_STAGES, RESOLUTION_MULTIPLE, check_resolution, check_latent_frames, video_frames_for,
                      normalize, pixel_size, resolution_warning, latent_frames_for_video)
from .memory import decode_memory, dit_memory, encode_memory, vae_dtype
from .noise import NoiseSource, make_noise
from .parallel import ParallelContext, splits_cfg
from .placement import OUT_OF_MEMORY, Placement
from .resume import ResumeState, model_fingerprint, tensor_digest
from .sampler import Conditioning, FrameCallback, PyramidSampler, StepCallback, Steps, stage_steps
from .scheduler import PyramidFlowScheduler
from .text import PromptSchedule, TextEmbeddings, effective_prompts, parse_prompt_schedule, schedule_units
from .text.schedule import check_schedule
from .vae import ENCODE_TILE

log = logging.getLogger("pyramid_flow")

Noise = Union[str, NoiseSource, None]  # "default", "official", or a source; None = "default"
ScheduleLike = Union[str, Sequence[Tuple[float, str]]]  # "0: a / 4: b" or [(0.0, "a"), (4.0, "b")]
TimedEmbeddings = List[Tuple[float, TextEmbeddings]]  # (start in seconds, positive embeddings), the first at 0 s
VaeProgress = Optional[Callable[[int, int], None]]  # callback(done, total) after each VAE piece
HISTORY_ENCODE_WINDOW = 2  # latent frames per chunk when a video is encoded to be continued (official: 16 frames)


# --- the request ---------------------------------------------------------------------------------------------


def check_request(width: int, height: int, latent_frames: int, checkpoint: Optional[str]) -> Optional[str]:
    """Raise before any heavy work on a size or length that cannot be made; return the warning for one that
    ``checkpoint`` ('384p', '768p', 'image', None) was not trained on (None when it was)."""
    check_resolution(width, height)
    check_latent_frames(latent_frames, checkpoint)
    return resolution_warning(width, height, latent_frames, checkpoint)


# --- text ----------------------------------------------------------------------------------------------------


def encode_prompts(encode: Callable[[List[str]], TextEmbeddings], prompt: Union[str, Sequence[str], None],
                   negative_prompt: Optional[str], prompt_schedule: Optional[ScheduleLike] = None,
                   add_suffix: bool = True) -> Tuple[TimedEmbeddings, TextEmbeddings]:
    """(timed positive embeddings, negative embeddings). ``encode`` turns texts into one batch of embeddings.

    One prompt (or a batch of prompts) starts at 0 s. A ``prompt_schedule`` replaces it: its times are checked
    here, before any encoding, and each distinct prompt is encoded once. The official suffix goes on positive
    prompts only; a None negative prompt is ''.
    """
    if prompt_schedule is None:
        prompts, negatives = effective_prompts(prompt, negative_prompt, add_suffix)
        return [(0.0, encode(prompts))], encode(negatives)
    entries = parse_prompt_schedule(prompt_schedule) if isinstance(prompt_schedule, str) else list(prompt_schedule)
    check_schedule(entries)
    texts = list(dict.fromkeys(text for _, text in entries))
    prompts, negatives = effective_prompts(texts, negative_prompt, add_suffix)
    by_text = {text: encode([effective]) for text, effective in zip(texts, prompts)}
    return [(seconds, by_text[text]) for seconds, text in entries], encode(negatives[:1])


def timed_conditioning(entries: TimedEmbeddings, latent_frames: int) -> Conditioning:
    """The sampler's positive conditioning for a video of ``latent_frames``: the embeddings of a single prompt, or a
    :class:`PromptSchedule` switching at the latent frame that holds each time (entries at or after the end of the
    video are dropped)."""
    if len(entries) == 1:
        return entries[0][1]
    units = schedule_units([(seconds, index) for index, (seconds, _) in enumerate(entries)], latent_frames)
    return PromptSchedule(tuple((unit, entries[index][1]) for unit, index in units))


# --- sampling ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingSettings:
    """How a run samples: steps per pyramid stage, guidance, the noise and the history window."""

    first_frame_steps: Steps = (20, 20, 20)  # the first frame of text-to-video
    video_steps: Steps = (10, 10, 10)  # every later frame (all generated frames of image-to-video and extension)
    guidance_scale: float = 7.0  # CFG of the first frame; 0 turns CFG off (no negative pass) for the whole run
    video_guidance_scale: float = 5.0
    seed: int = 0
    noise: Noise = None
    history_window: Optional[int] = None  # None: the whole history (official)


def make_sampler(dit: torch.nn.Module, device: torch.device, dtype: torch.dtype, settings: SamplingSettings,
                 callback: Optional[StepCallback] = None, scheduler: Optional[PyramidFlowScheduler] = None,
                 frame_callback: Optional[FrameCallback] = None, parallel: Optional[ParallelContext] = None,
                 cfg_devices: Optional[CfgOnTwoDevices] = None) -> PyramidSampler:
    """The sampler of a run, with its noise source: ``settings.noise`` itself when it is a source, else the one
    registered under its name, for ``settings.seed``."""
    scheduler = scheduler or PyramidFlowScheduler()
    noise = settings.noise
    if noise is None or isinstance(noise, str):
        noise = make_noise(noise or "default", settings.seed, gamma=scheduler.gamma, device=device)
    return PyramidSampler(dit, noise, device, dtype, scheduler, callback, frame_callback, parallel, cfg_devices)


@contextmanager
def cfg_on_second_device(second: Optional[Placement], memory_required: int, dtype: torch.dtype,
                         guided: bool) -> Iterator[Optional[CfgOnTwoDevices]]:
    """The second device's DiT, loaded, running the positive CFG half of each step (None without one, or
    without CFG)."""
    if second is None or not guided:
        yield None
        return
    with second.loaded(memory_required) as dit:
        devices = CfgOnTwoDevices(dit, second.device, dtype)
        try:
            yield devices
        finally:
            devices.close()


def resumable(settings: SamplingSettings) -> bool:
    """Whether a stopped run with these settings can continue exactly: with the default noise, keyed per frame."""
    return settings.noise is None or settings.noise == "default"


def run_identity(dit: torch.nn.Module, variant: str, settings: SamplingSettings, size: Tuple[int, int], text: str,
                 start: str) -> Dict[str, str]:
    """What the frames of a run depend on, for its :class:`~pyramid_flow.resume.ResumeState`: the model, the seed,
    the size, steps and guidance, the conditioning (``text``: the prompts of a request, or
    :func:`conditioning_digest`) and what the run starts from (``start``: an input file's digest, or
    :func:`~pyramid_flow.resume.tensor_digest` of image moments or of the video continued). Not its length,
    history window, device or dtype: a retry may change those."""
    return {
        "variant": variant, "model": model_fingerprint(dit), "seed": str(settings.seed), "size": f"{size[1]}x{size[0]}",
        "first_frame_steps": str(stage_steps(settings.first_frame_steps, PYRAMID_STAGES)),
        "video_steps": str(stage_steps(settings.video_steps, PYRAMID_STAGES)),
        "guidance_scale": repr(float(settings.guidance_scale)),
        "video_guidance_scale": repr(float(settings.video_guidance_scale)), "text": text, "start": start,
    }


def conditioning_digest(cond: Conditioning, uncond: Optional[TextEmbeddings]) -> str:
    """A digest of the positive conditioning (every prompt of a schedule, with its first frame) and the negative."""
    entries = [t for unit, emb in PromptSchedule.of(cond).entries for t in (torch.tensor(float(unit)), *emb.tensors())]
    return tensor_digest(*entries, *(uncond.tensors() if uncond is not None else (None,)))


def video_size(size: Optional[Tuple[int, int]] = None, image_moments: Optional[torch.Tensor] = None,
               history: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """(height, width) in pixels of a run: ``size`` for text-to-video, else the size of what it starts from."""
    start = image_moments if image_moments is not None else history
    return size if start is None else pixel_size(start)


def sample(placement: Placement, cond: Conditioning, uncond: Optional[TextEmbeddings], settings: SamplingSettings, *,
           latent_frames: int, dtype: torch.dtype, size: Optional[Tuple[int, int]] = None,
           image_moments: Optional[torch.Tensor] = None, history: Optional[torch.Tensor] = None, variant=None,
           callback: Optional[StepCallback] = None, compile_options: Optional[Mapping] = None,
           scheduler: Optional[PyramidFlowScheduler] = None, resume: Optional[ResumeState] = None,
           parallel: Optional[ParallelContext] = None, second: Optional[Placement] = None) -> torch.Tensor:
    """Sample a video of ``latent_frames`` on the placed DiT -> normalised latents [B, 16, latent_frames, h, w].

    Text-to-video from nothing (``size`` = (height, width) in pixels); image-to-video from ``image_moments``, the
    first frame's VAE moments [B, 32, 1, h, w] (the sampler draws their posterior sample, normalised for
    ``variant``); or the continuation of ``history``, normalised latents [B, 16, T0, h, w]. ``dtype``: the compute
    dtype; ``compile_options``: torch.compile kwargs for the DiT blocks (None: eager). ``resume``: where the
    finished frames are kept as they are made; when it already holds some, the run continues after them and gives
    what the uninterrupted run gives (:mod:`pyramid_flow.resume`; default noise only). ``parallel``: CFG halves and
    sequence shares over ranks (:mod:`pyramid_flow.parallel`); ``second``: a copy of the DiT on a second device,
    which runs the positive CFG half of every step (:mod:`pyramid_flow.cfg_devices`).
    """
    height, width = video_size(size, image_moments, history)
    if resume is not None and not resumable(settings):
        log.info("Pyramid Flow: the official noise is one sequential stream, so this run keeps no resume state.")
        resume = None
    done = resume.load(0 if history is None else history.shape[2]) if resume is not None else None
    if done is not None:
        finished = done if history is None else torch.cat([history.to(done.device, done.dtype), done], dim=2)
        if finished.shape[2] >= latent_frames:
            return finished[:, :, :latent_frames]
        log.info("Pyramid Flow: resuming after latent frame %d of %d (kept in %s).", finished.shape[2], latent_frames,
                 resume.folder)
        image_moments, history = None, finished
    guided = settings.guidance_scale > 0
    doubled = guided and not splits_cfg(parallel) and second is None  # CFG doubles the batch, unless split
    batch = PromptSchedule.of(cond).batch * (2 if doubled else 1)
    memory = dit_memory(placement.module, height, width, latent_frames - 1, batch, dtype, settings.history_window)
    guidance = dict(guidance_scale=settings.guidance_scale, video_guidance_scale=settings.video_guidance_scale,
                    history_window=settings.history_window)
    with placement.loaded(memory) as dit, compiled_blocks(dit, compile_options), \
            cfg_on_second_device(second, memory, dtype, guided) as cfg_devices:
        sampler = make_sampler(dit, placement.device, dtype, settings, callback, scheduler,
                               resume.save_frame if resume is not None else None, parallel, cfg_devices)
        if image_moments is not None:
            return sampler.image_to_video(cond, uncond, image_moments=image_moments, variant=variant,
                                          latent_frames=latent_frames, steps=settings.video_steps, **guidance)
        if history is not None:
            return sampler.extend(cond, uncond, history=history, new_latent_frames=latent_frames - history.shape[2],
                                  steps=settings.video_steps, **guidance)
        return sampler.text_to_video(cond, uncond, height=height, width=width, latent_frames=latent_frames,
                                     first_frame_steps=settings.first_frame_steps, video_steps=settings.video_steps,
                                     **guidance)


# --- VAE -----------------------------------------------------------------------------------------------------

MIN_TILE = 64  # the smallest tile an out-of-memory retry goes down to


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


def run_vae(placement: Placement, memory_required: int, x: torch.Tensor, tile: int, window: int, what: str,
            call: Callable[[torch.nn.Module, torch.Tensor, int, int], torch.Tensor]) -> torch.Tensor:
    """``call(vae, x, tile, window)`` on the placed VAE, ``x`` moved to its device and dtype; on out-of-memory the
    cache is freed and it runs again with smaller settings."""
    with placement.loaded(memory_required) as vae, torch.no_grad():
        x = x.to(device=placement.device, dtype=vae_dtype(vae))
        while True:
            try:
                return call(vae, x, tile, window)
            except OUT_OF_MEMORY:
                placement.free_cache()
                smaller = smaller_settings(tile, window)
                if smaller is None:
                    raise
                log.warning("Pyramid Flow %s ran out of memory at tile %s, window %s; retrying with tile %s, "
                            "window %s", what, tile, window, *smaller)
                tile, window = smaller


def encode_video(placement: Placement, video: torch.Tensor, tile: int = ENCODE_TILE, window: int = 2,
                 tile_overlap: float = 0.25, callback: VaeProgress = None, what: str = "VAE encode") -> torch.Tensor:
    """VAE input [B, 3, F, H, W] in [-1, 1] (F = 1 + 8k) -> moments [B, 32, T, H/8, W/8] (mean ‖ logvar).

    ``tile``: spatial tile in pixels (0: whole frames); ``window``: latent frames per temporal chunk. Smaller
    settings are tried after an out-of-memory error.
    """
    memory = encode_memory(placement.module, tuple(video.shape), window, tile or None, tile_overlap)
    return run_vae(placement, memory, video, tile, window, what, lambda vae, video, tile, window: vae.encode(
        video, temporal_chunk=video.shape[2] > 1, window_size=window, tile_sample_min_size=tile or None,
        tile_overlap=tile_overlap, callback=callback))


def decode_video(placement: Placement, latent: torch.Tensor, tile: int, window: int, tile_overlap: float = 0.25,
                 callback: VaeProgress = None, output_device: Optional[torch.device] = None) -> torch.Tensor:
    """VAE-space latent [B, 16, T, h, w] -> video [B, 3, 8T - 7, 8h, 8w] in about [-1, 1], in the VAE's dtype.

    ``tile``: spatial tile in pixels (0: whole frames); ``window``: latent frames per temporal chunk;
    ``output_device``: where the video is assembled (default: the VAE's device), so that a GPU can hold one tile
    at a time. Smaller settings are tried after an out-of-memory error.
    """
    on_device = output_device is None or torch.device(output_device) == placement.device
    memory = decode_memory(placement.module, tuple(latent.shape), window, tile or None, tile_overlap,
                           output_on_device=on_device)
    return run_vae(placement, memory, latent, tile, window, "VAE decode", lambda vae, latent, tile, window: vae.decode(
        latent, temporal_chunk=True, window_size=window, tile_sample_min_size=tile or None, tile_overlap=tile_overlap,
        callback=callback, output_device=output_device))


def encode_first_frame(placement: Placement, image: ImageLike, size: Optional[Tuple[int, int]] = None,
                       resize_mode: str = "crop", callback: VaeProgress = None) -> torch.Tensor:
    """The first frame of image-to-video -> its VAE moments [1, 32, 1, H/8, W/8], encoded as the official app does
    (PIL LANCZOS resize to ``size`` = (width, height) keeping the aspect, uint8 -> [-1, 1], tile 256)."""
    video = first_frame_input(image, size, resize_mode)
    check_resolution(video.shape[-1], video.shape[-2], None if size else "the image")
    return encode_video(placement, video, ENCODE_TILE, 1, callback=callback, what="image-to-video encode")


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """Frames [F, H, W, C] in [0, 1] -> VAE input [1, 3, F, H, W] in [-1, 1] (alpha dropped)."""
    return frames[..., :3].float().permute(3, 0, 1, 2).unsqueeze(0) * 2.0 - 1.0


def encodable_frames(num_frames: int) -> int:
    """The causal VAE encodes 1 + 8k frames: the largest such count <= num_frames."""
    return video_frames_for(latent_frames_for_video(num_frames))


def centre_crop(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Frames [F, H, W, C] cut to [F, height, width, C] around their centre (no resampling)."""
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return frames[:, top : top + height, left : left + width]


def fit_frames(frames: torch.Tensor, size: Optional[Tuple[int, int]] = None,
               source: str = "the video") -> Tuple[torch.Tensor, Optional[str]]:
    """A video to continue, as frames that can be encoded: the first 1 + 8k frames, resized to ``size`` = (width,
    height) keeping the aspect (centre crop), or without ``size`` centre-cropped to multiples of 64. Returns the
    frames and a note of what changed (None when nothing did); ``source`` names the frames in a size error."""
    count = encodable_frames(frames.shape[0])
    height, width = frames.shape[1:3]
    if size is not None:
        width, height = size
        fitted = torch.stack([torch.from_numpy(np.array(resize_to(frame, width, height)))
                              for frame in frames[:count]]).float() / 255
    else:
        height, width = height // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE, width // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE
        fitted = centre_crop(frames[:count], width, height)
    check_resolution(width, height, source)
    if count == frames.shape[0] and (height, width) == tuple(frames.shape[1:3]):
        return fitted, None
    how = "resized" if size is not None else "centre-cropped"
    return fitted, (f"Using {count} of {frames.shape[0]} frames (the causal VAE encodes 1 + 8k) at {width}x{height} "
                    f"({how} from {frames.shape[2]}x{frames.shape[1]}).")


def frames_to_history(placement: Placement, frames: torch.Tensor, variant, callback: VaeProgress = None) -> torch.Tensor:
    """Frames [F, H, W, 3] in [0, 1] that :func:`fit_frames` returned -> normalised latents [1, 16, T, h, w]
    (the posterior mean), the history to continue."""
    moments = encode_video(placement, frames_to_video(frames), ENCODE_TILE, HISTORY_ENCODE_WINDOW, callback=callback,
                           what="video encode")
    return normalize(moments[:, :LATENT_CHANNELS].float(), variant)
