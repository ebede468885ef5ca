"""Sampling nodes: the Pyramid Flow sampler (text-to-video, text-to-image, image-to-video) and video extension,
both on ComfyUI's model management with progress, previews and interrupt at every DiT step."""

import logging
from typing import Callable, Optional

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview
from comfy_api.v0_0_2 import io

from ..pyramid_flow import latents as latent_utils
from ..pyramid_flow.dit.compile import compiled_blocks
from ..pyramid_flow.memory import dit_memory
from ..pyramid_flow.noise import NOISE_MODES, make_noise
from ..pyramid_flow.sampler import PyramidSampler, StepInfo, count_dit_steps
from ..pyramid_flow.scheduler import PyramidFlowScheduler
from ..pyramid_flow.text import TextEmbeddings
from ..pyramid_flow.variants import VARIANTS, get_variant
from . import models
from .base import PyramidFlowNode
from .common import MAX_SECONDS, MAX_SIZE, centre_crop, check_image, check_size, describe_duration, image_to_video
from .conditioning import conditioning_to_embeddings, conditioning_to_schedule, conditioning_variant
from .latent import encode_with_retry, latent_5d, normalized_latent
from .types import COMPILE_OPTIONS_KEY, MOMENTS_KEY, NORMALIZED_KEY, SEED_KEY, VARIANT_KEY, ModelSocket, VAESocket

CATEGORY = "PyramidFlow/sampling"
log = logging.getLogger("pyramid_flow")


class PyramidFlowLatentFormat(comfy.latent_formats.LatentFormat):
    """For live previews only: 16-channel latents of Pyramid Flow's VAE (initialised from SD3's, so SD3's
    latent-to-RGB factors give a usable colour preview)."""

    latent_channels = latent_utils.LATENT_CHANNELS
    latent_dimensions = 3

    def __init__(self):
        sd3 = comfy.latent_formats.SD3()
        self.latent_rgb_factors = sd3.latent_rgb_factors
        self.latent_rgb_factors_bias = getattr(sd3, "latent_rgb_factors_bias", None)
        self.taesd_decoder_name = None


def send_text(node_id, text: str) -> None:
    """Status text on the node (0.3.34+); silent outside a running server."""
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # no server (in-process use) or an older ComfyUI
        pass


def make_step_callback(total: int, device) -> Callable[[StepInfo], None]:
    """Progress over every DiT step of every unit, a preview of the frame being generated, and an interrupt check
    per step (the progress hook raises InterruptProcessingException once /interrupt was posted)."""
    pbar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(device, PyramidFlowLatentFormat())

    def callback(info: StepInfo) -> None:
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", info.latent[:1].float())
        pbar.update_absolute(info.done, info.total, preview)
        mm.throw_exception_if_processing_interrupted()

    return callback


def check_text_dims(dit_model, cond: TextEmbeddings, variant_of_cond: Optional[str]) -> None:
    config = getattr(dit_model.info, "config", {}) or {}
    context_dim, pooled_dim = config.get("joint_attention_dim"), config.get("pooled_projection_dim")
    got = (cond.prompt_embeds.shape[-1], cond.pooled.shape[-1])
    if (context_dim and got[0] != context_dim) or (pooled_dim and got[1] != pooled_dim):
        needs = "; ".join(f"{v.display_name} needs {v.comfy_clip_loader}" for v in VARIANTS.values())
        raise ValueError(
            f"The text conditioning ({variant_of_cond or 'unknown'} encoders: T5 {got[0]}, pooled {got[1]}) does not "
            f"fit this {dit_model.variant_name} DiT (T5 {context_dim}, pooled {pooled_dim}). {needs}.")


def run_sampler(model, run: Callable[[PyramidSampler], torch.Tensor], *, height: int, width: int, num_units: int,
                new_units: int, first_steps, video_steps, from_scratch: bool, guidance_scale: float, seed: int,
                noise: str, history_window: Optional[int]) -> torch.Tensor:
    """Load the DiT through ComfyUI's model management, build the sampler and call ``run(sampler)``; returns the
    normalised latents it produced (the ``common_ksampler`` of this pack)."""
    wrapper = model.model
    compute = wrapper.compute_dtype
    batch = 2 if guidance_scale > 0 else 1  # CFG runs the negative prompt in the same call
    memory = dit_memory(wrapper.diffusion_model, height, width, num_units - 1, batch, compute, history_window)
    mm.load_models_gpu([model], memory_required=memory)
    models.use_comfy_attention()
    device = model.load_device
    scheduler = PyramidFlowScheduler()
    source = make_noise(noise, seed, gamma=scheduler.gamma, device=device)
    total = count_dit_steps(new_units, first_steps, video_steps, scheduler.stages, from_scratch)
    sampler = PyramidSampler(wrapper.diffusion_model, source, device, compute, scheduler, make_step_callback(total, device))
    try:
        with compiled_blocks(wrapper.diffusion_model, model.model_options.get(COMPILE_OPTIONS_KEY)):
            return run(sampler)
    except BaseException:
        models.free_after_interrupt()
        raise


def latent_output(latents: torch.Tensor, variant_name: str, seed: int) -> dict:
    """Normalised latents -> a LATENT: VAE-space samples, plus the normalised copy for an exact continuation."""
    normalized = latents.float().to(mm.intermediate_device())
    samples = latent_utils.denormalize(normalized, get_variant(variant_name))
    return {"samples": samples, NORMALIZED_KEY: normalized, VARIANT_KEY: variant_name, SEED_KEY: seed}


def _int(name: str, default: int, minimum: int, maximum: int, tooltip: str, step: int = 1) -> io.Int.Input:
    return io.Int.Input(name, default=default, min=minimum, max=maximum, step=step, tooltip=tooltip)


def _float(name: str, default: float, minimum: float, maximum: float, step: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=minimum, max=maximum, step=step, round=0.01, tooltip=tooltip)


STAGE_TOOLTIP = "Steps of pyramid stage {} (1/4, 1/2, full resolution) for the {}."


def _steps(prefix: str, default: int, what: str) -> list:
    return [_int(f"{prefix}_{i}", default, 1, 200, STAGE_TOOLTIP.format(i, what)) for i in (1, 2, 3)]


def _sampling_inputs(guidance_tooltip: str) -> list:
    """Guidance, seed and the optional noise / history settings shared by the sampler and extension."""
    return [
        _float("guidance_scale", 7.0, 0.0, 30.0, 0.1, guidance_tooltip),
        _float("video_guidance_scale", 5.0, 0.0, 30.0, 0.1,
               "CFG of the later frames (official: 5; 4 for image-to-video; lower it if motion fades or blurs)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
            "Seed of every noise draw. default noise: the same seed gives the same video on any device, and a "
            "video extended with the same seed continues exactly as one longer run.")),
    ]


def _run_options() -> list:
    return [
        io.Combo.Input("noise", options=list(NOISE_MODES), default="default", optional=True, tooltip=(
            "default: per-frame seeded noise, the same on every device. official: the official app's random streams "
            "(torch.manual_seed), so a seed from the official demo gives its video.")),
        io.Int.Input("history_window", default=0, min=0, max=latent_utils.TRAINED_LATENT_FRAMES - 1, optional=True,
                     tooltip=(
            "0: every earlier frame conditions the next (official; memory grows with the video). K >= 2: only the "
            "first frame and the K-1 newest (flat memory for any length; e.g. 16). Use it beyond 10 s.")),
    ]


def _window(history_window: Optional[int]) -> Optional[int]:
    return history_window if history_window else None


class PyramidFlowVideoSampler(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoSampler",
            display_name="Pyramid Flow Sampler",
            category=CATEGORY,
            description=("Autoregressive pyramidal flow sampling: each latent frame runs three resolution stages, "
                         "conditioned on the frames before it. Duration 0 makes one image (text-to-image)."),
            inputs=[
                ModelSocket.Input("model", tooltip="From 'Pyramid Flow Model Loader'."),
                io.Conditioning.Input("positive", tooltip="'positive' of Pyramid Flow Text Encode or Prompt Schedule."),
                io.Conditioning.Input("negative", tooltip="'negative' of 'Pyramid Flow Text Encode'."),
                _int("width", 640, latent_utils.RESOLUTION_MULTIPLE, MAX_SIZE, (
                    "Video width, a multiple of 64. Trained: 640 (384p), 1280 (768p). Ignored for image-to-video (the "
                    "image latent sets the size)."), latent_utils.RESOLUTION_MULTIPLE),
                _int("height", 384, latent_utils.RESOLUTION_MULTIPLE, MAX_SIZE,
                     "Video height, a multiple of 64. Trained: 384 (384p), 768 (768p).", latent_utils.RESOLUTION_MULTIPLE),
                _float("duration_seconds", 5.0, 0.0, MAX_SECONDS, 0.1, (
                    "Length at 24 fps, rounded up to whole latent frames T: frames = 8*T - 7 (5 s -> 121 frames, 10 s "
                    "-> 241). The exact count is shown on the node and returned as 'frames'. 0 = one image. Trained "
                    "maxima: 5 s (384p), 10 s (768p); longer works best with history_window.")),
                *_steps("first_frame_steps", 20, "first frame"),
                *_steps("video_steps", 10, "later frames (and every frame in image-to-video)"),
                *_sampling_inputs("CFG of the first frame (official: 7 for 384p, 9 for 768p). 0 turns CFG off (no "
                                  "negative pass)."),
                io.Latent.Input("image_latent", optional=True, tooltip=(
                    "Image-to-video: 'Pyramid Flow Image To Video' output (the first frame). Leave empty for "
                    "text-to-video.")),
                *_run_options(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip=(
                    "Video latent [1, 16, T, H/8, W/8] in VAE space, for 'Pyramid Flow VAE Decode' or 'Pyramid Flow "
                    "Extend'.")),
                io.Int.Output(display_name="frames", tooltip="Number of video frames the latent decodes to (8*T - 7)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def process(cls, model, positive, negative, width: int, height: int, duration_seconds: float,
                first_frame_steps_1: int, first_frame_steps_2: int, first_frame_steps_3: int, video_steps_1: int,
                video_steps_2: int, video_steps_3: int, guidance_scale: float, video_guidance_scale: float,
                seed: int, image_latent: Optional[dict] = None, noise: str = "default",
                history_window: int = 0) -> io.NodeOutput:
        temp = latent_utils.temp_for_seconds(duration_seconds)
        first = _first_frame(image_latent, cls.node_id())
        if first is not None:
            height, width = latent_utils.pixel_size(first)
            check_size(width, height, source="'image_latent'")
        else:
            check_size(width, height)
        checkpoint = model.model.checkpoint
        latent_utils.check_temp(temp, checkpoint)
        warning = latent_utils.resolution_warning(width, height, temp, checkpoint)
        if warning:
            log.warning("Pyramid Flow: %s", warning)
        send_text(cls.node_id(), describe_duration(duration_seconds) + (f"\n{warning}" if warning else ""))
        cond, uncond = conditioning_to_schedule(positive, temp), conditioning_to_embeddings(negative, "negative")
        check_text_dims(model.model, conditioning_to_embeddings(positive[:1], "positive"), conditioning_variant(positive))
        variant = get_variant(model.model.variant_name)
        first_steps = [first_frame_steps_1, first_frame_steps_2, first_frame_steps_3]
        video_steps = [video_steps_1, video_steps_2, video_steps_3]
        guidance = dict(guidance_scale=guidance_scale, video_guidance_scale=video_guidance_scale,
                        history_window=_window(history_window))

        def run(sampler: PyramidSampler) -> torch.Tensor:
            if first is None:
                return sampler.text_to_video(cond, uncond, height=height, width=width, temp=temp,
                                             first_frame_steps=first_steps, video_steps=video_steps, **guidance)
            if first.shape[1] == 2 * latent_utils.LATENT_CHANNELS:  # moments: the posterior is drawn in official order
                return sampler.image_to_video(cond, uncond, image_moments=first, variant=variant, temp=temp,
                                              steps=video_steps, **guidance)
            history = latent_utils.normalize(first.float(), variant)
            return sampler.extend(cond, uncond, history=history, units=temp - 1, steps=video_steps, **guidance)

        new_units = temp if first is None else temp - 1
        latents = run_sampler(model, run, height=height, width=width, num_units=temp, new_units=new_units,
                              first_steps=first_steps, video_steps=video_steps, from_scratch=first is None,
                              guidance_scale=guidance_scale, seed=seed, noise=noise,
                              history_window=_window(history_window))
        return io.NodeOutput(latent_output(latents, variant.name, seed), latent_utils.frames_for_temp(temp))


def _first_frame(image_latent: Optional[dict], node_id) -> Optional[torch.Tensor]:
    """The image-to-video first frame of a LATENT: its VAE moments [1, 32, 1, h, w] when it came from Image To Video
    (the sampler then draws the posterior sample), else its first latent frame [1, 16, 1, h, w] (VAE space)."""
    if image_latent is None:
        return None
    first = image_latent.get(MOMENTS_KEY)
    first = latent_5d(image_latent, "image_latent") if first is None else first
    if first.shape[0] > 1:
        message = (f"image_latent holds a batch of {first.shape[0]} images; the first one is used as the first "
                   "frame.")
        log.warning("Pyramid Flow: %s", message)
        send_text(node_id, message)
    return first[:1, :, :1]


class PyramidFlowVideoExtend(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoExtend",
            display_name="Pyramid Flow Extend",
            category=CATEGORY,
            description=("Continue a video: more latent frames generated against the video's own frames as history "
                         "(same or new prompt). Chain it for any length; with the default noise and the seed of the "
                         "first run, a latent from the sampler continues exactly as one longer run would."),
            inputs=[
                ModelSocket.Input("model", tooltip="From 'Pyramid Flow Model Loader'."),
                io.Conditioning.Input("positive", tooltip="The prompt (or a prompt schedule) for the new frames."),
                io.Conditioning.Input("negative", tooltip="'negative' of 'Pyramid Flow Text Encode'."),
                _float("duration_seconds", 5.0, 0.3, MAX_SECONDS, 0.1,
                       "Seconds to add at 24 fps, in latent frames of 8 video frames (1/3 s)."),
                *_steps("video_steps", 10, "new frames"),
                *_sampling_inputs("Turns CFG on (> 0) or off (0), as the official image-to-video; the new frames "
                                  "use video_guidance_scale."),
                io.Latent.Input("video", optional=True, tooltip=(
                    "The video to continue as a LATENT: from the sampler, another Extend, or Pyramid Flow VAE "
                    "Encode. Or connect 'images' and 'vae' instead.")),
                io.Image.Input("images", optional=True, tooltip=(
                    "Or the video as frames (encoded with the VAE; 1 + 8k frames are used, the rest is trimmed; the "
                    "size is centre-cropped to multiples of 64).")),
                VAESocket.Input("vae", optional=True, tooltip="Needed with 'images'."),
                *_run_options(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The whole video (given + new frames): decode it, or "
                                                                 "extend it again."),
                io.Latent.Output(display_name="new_latent", tooltip="Only the new latent frames."),
                io.Int.Output(display_name="frames", tooltip="Video frames of the whole video (8*T - 7)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def process(cls, model, positive, negative, duration_seconds: float, video_steps_1: int, video_steps_2: int,
                video_steps_3: int, guidance_scale: float, video_guidance_scale: float, seed: int,
                video: Optional[dict] = None, images: Optional[torch.Tensor] = None, vae=None,
                noise: str = "default", history_window: int = 0) -> io.NodeOutput:
        variant = get_variant(model.model.variant_name)
        history = _history(video, images, vae, variant.name, cls.node_id())
        units = latent_utils.units_for_seconds(duration_seconds)
        height, width = latent_utils.pixel_size(history)
        total_units = history.shape[2] + units
        latent_utils.check_temp(total_units, model.model.checkpoint)
        if video is not None and video.get(SEED_KEY) not in (None, seed):
            log.info("Pyramid Flow Extend: seed %s differs from the %s the video was sampled with: the continuation is "
                     "valid, but not what one longer run with that seed would give.", seed, video[SEED_KEY])
        send_text(cls.node_id(), f"+{units} latent frames: {latent_utils.frames_for_temp(total_units)} frames")
        cond, uncond = conditioning_to_schedule(positive, total_units), conditioning_to_embeddings(negative, "negative")
        check_text_dims(model.model, conditioning_to_embeddings(positive[:1], "positive"), conditioning_variant(positive))
        steps = [video_steps_1, video_steps_2, video_steps_3]

        def run(sampler: PyramidSampler) -> torch.Tensor:
            return sampler.extend(cond, uncond, history=history, units=units, steps=steps, guidance_scale=guidance_scale,
                                  video_guidance_scale=video_guidance_scale, history_window=_window(history_window))

        latents = run_sampler(model, run, height=height, width=width, num_units=total_units, new_units=units,
                              first_steps=steps, video_steps=steps, from_scratch=False, guidance_scale=guidance_scale,
                              seed=seed, noise=noise, history_window=_window(history_window))
        new = latents[:, :, history.shape[2]:]
        return io.NodeOutput(latent_output(latents, variant.name, seed), latent_output(new, variant.name, seed),
                             latent_utils.frames_for_temp(total_units))


def _history(video: Optional[dict], images: Optional[torch.Tensor], vae, variant_name: str, node_id) -> torch.Tensor:
    """The video to continue as normalised latents [1, 16, T, h, w], from a LATENT or from frames + VAE."""
    if (video is None) == (images is None):
        raise ValueError("Connect exactly one video to continue: 'video' (a LATENT) or 'images' (frames, with 'vae').")
    if video is not None:
        made_by = video.get(VARIANT_KEY)
        if made_by not in (None, variant_name):
            raise ValueError(f"The video latent was made with the {made_by} model; this model is {variant_name}. "
                             "Load the same model family to continue it.")
        history = normalized_latent(video, variant_name, "video")
        check_size(*latent_utils.pixel_size(history)[::-1], source="'video'")
        return history[:1]
    if vae is None:
        raise ValueError("'images' needs the 'vae' input too (Pyramid Flow VAE Loader), to encode the frames.")
    check_image(images, "images")
    frames = latent_utils.frames_for_temp(latent_utils.temp_for_frames(images.shape[0]))
    height = images.shape[1] // latent_utils.RESOLUTION_MULTIPLE * latent_utils.RESOLUTION_MULTIPLE
    width = images.shape[2] // latent_utils.RESOLUTION_MULTIPLE * latent_utils.RESOLUTION_MULTIPLE
    check_size(width, height, source="'images' (after cropping to multiples of 64)")
    if frames != images.shape[0] or (height, width) != tuple(images.shape[1:3]):
        message = (f"Using {frames} of {images.shape[0]} frames (the causal VAE encodes 1 + 8k) at {width}x{height} "
                   f"(centre-cropped from {images.shape[2]}x{images.shape[1]}).")
        log.info("Pyramid Flow Extend: %s", message)
        send_text(node_id, message)
    video = image_to_video(centre_crop(images[:frames], width, height))
    moments = encode_with_retry(vae, video, 256, 2, "Extend encode")
    return latent_utils.normalize(moments[:, : moments.shape[1] // 2].float(), get_variant(variant_name))


NODES = [PyramidFlowVideoSampler, PyramidFlowVideoExtend]
