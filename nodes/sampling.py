"""Sampling nodes: the Pyramid Flow sampler (text-to-video, text-to-image, image-to-video) and video extension,
both on ComfyUI's model management with progress, previews and interrupt at every DiT step."""

import logging
from typing import Optional

import torch
from comfy_api.v0_0_2 import io

from ..pyramid_flow import latents as latent_utils
from ..pyramid_flow.noise import NOISE_MODES
from ..pyramid_flow.orchestration import SamplingSettings, check_request, fit_frames, frames_to_history, timed_conditioning
from ..pyramid_flow.variants import get_variant
from . import runtime
from .base import PyramidFlowNode
from .common import MAX_SECONDS, MAX_SIZE, check_image, check_size, describe_duration
from .types import MOMENTS_KEY, SEED_KEY, VARIANT_KEY, ModelSocket, VAESocket

CATEGORY = "PyramidFlow/sampling"
log = logging.getLogger("pyramid_flow")


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
    def validate_inputs(cls, noise: str = "default"):
        return cls.check_combos(noise=noise)

    @classmethod
    def process(cls, model, positive, negative, width: int, height: int, duration_seconds: float,
                first_frame_steps_1: int, first_frame_steps_2: int, first_frame_steps_3: int, video_steps_1: int,
                video_steps_2: int, video_steps_3: int, guidance_scale: float, video_guidance_scale: float,
                seed: int, image_latent: Optional[dict] = None, noise: str = "default",
                history_window: int = 0) -> io.NodeOutput:
        latent_frames = latent_utils.latent_frames_for_seconds(duration_seconds)
        first = _first_frame(image_latent, cls.node_id())
        if first is not None:
            height, width = latent_utils.pixel_size(first)
            check_size(width, height, source="'image_latent'")
        else:
            check_size(width, height)
        warning = check_request(width, height, latent_frames, model.model.checkpoint)
        if warning:
            log.warning("Pyramid Flow: %s", warning)
        runtime.send_text(cls.node_id(), describe_duration(duration_seconds) + (f"\n{warning}" if warning else ""))
        cond, uncond = _conditioning(model, positive, negative, latent_frames)
        variant = get_variant(model.model.variant_name)
        settings = SamplingSettings([first_frame_steps_1, first_frame_steps_2, first_frame_steps_3],
                                    [video_steps_1, video_steps_2, video_steps_3], guidance_scale,
                                    video_guidance_scale, seed, noise, _window(history_window))
        if first is None:
            start = dict(size=(height, width))
        elif first.shape[1] == 2 * latent_utils.LATENT_CHANNELS:  # moments: the posterior is drawn in official order
            start = dict(image_moments=first, variant=variant)
        else:
            start = dict(history=latent_utils.normalize(first.float(), variant))
        latents = runtime.sample(model, cond, uncond, settings, latent_frames, cls.node_id(), **start)
        return io.NodeOutput(runtime.latent_output(latents, variant.name, seed),
                             latent_utils.video_frames_for(latent_frames))


def _conditioning(model, positive, negative, latent_frames: int):
    """The sampler's (positive, negative) conditioning from the CONDITIONING inputs, checked against the DiT."""
    cond = timed_conditioning(runtime.conditioning_to_timed(positive), latent_frames)
    runtime.check_text_dims(model.model, runtime.conditioning_to_embeddings(positive[:1], "positive"),
                            runtime.conditioning_variant(positive))
    return cond, runtime.conditioning_to_embeddings(negative, "negative")


def _first_frame(image_latent: Optional[dict], node_id) -> Optional[torch.Tensor]:
    """The image-to-video first frame of a LATENT: its VAE moments [1, 32, 1, h, w] when it came from Image To Video
    (the sampler then draws the posterior sample), else its first latent frame [1, 16, 1, h, w] (VAE space)."""
    if image_latent is None:
        return None
    first = image_latent.get(MOMENTS_KEY)
    first = runtime.latent_5d(image_latent, "image_latent") if first is None else first
    if first.shape[0] > 1:
        message = (f"image_latent holds a batch of {first.shape[0]} images; the first one is used as the first "
                   "frame.")
        log.warning("Pyramid Flow: %s", message)
        runtime.send_text(node_id, message)
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
    def validate_inputs(cls, noise: str = "default"):
        return cls.check_combos(noise=noise)

    @classmethod
    def process(cls, model, positive, negative, duration_seconds: float, video_steps_1: int, video_steps_2: int,
                video_steps_3: int, guidance_scale: float, video_guidance_scale: float, seed: int,
                video: Optional[dict] = None, images: Optional[torch.Tensor] = None, vae=None,
                noise: str = "default", history_window: int = 0) -> io.NodeOutput:
        variant = get_variant(model.model.variant_name)
        history = _history(video, images, vae, variant.name, cls.node_id())
        added = latent_utils.latent_frames_to_add(duration_seconds)
        height, width = latent_utils.pixel_size(history)
        latent_frames = history.shape[2] + added
        warning = check_request(width, height, latent_frames, model.model.checkpoint)
        if warning:
            log.warning("Pyramid Flow: %s", warning)
        if video is not None and video.get(SEED_KEY) not in (None, seed):
            log.info("Pyramid Flow Extend: seed %s differs from the %s the video was sampled with: the continuation is "
                     "valid, but not what one longer run with that seed would give.", seed, video[SEED_KEY])
        runtime.send_text(cls.node_id(), f"+{added} latent frames: {latent_utils.video_frames_for(latent_frames)} frames")
        cond, uncond = _conditioning(model, positive, negative, latent_frames)
        steps = [video_steps_1, video_steps_2, video_steps_3]
        settings = SamplingSettings(steps, steps, guidance_scale, video_guidance_scale, seed, noise,
                                    _window(history_window))
        latents = runtime.sample(model, cond, uncond, settings, latent_frames, cls.node_id(), history=history)
        new = latents[:, :, history.shape[2]:]
        return io.NodeOutput(runtime.latent_output(latents, variant.name, seed),
                             runtime.latent_output(new, variant.name, seed), latent_utils.video_frames_for(latent_frames))


def _history(video: Optional[dict], images: Optional[torch.Tensor], vae, variant_name: str, node_id) -> torch.Tensor:
    """The video to continue as normalised latents [1, 16, T, h, w], from a LATENT or from frames + VAE."""
    if (video is None) == (images is None):
        raise ValueError("Connect exactly one video to continue: 'video' (a LATENT) or 'images' (frames, with 'vae').")
    if video is not None:
        made_by = video.get(VARIANT_KEY)
        if made_by not in (None, variant_name):
            raise ValueError(f"The video latent was made with the {made_by} model; this model is {variant_name}. "
                             "Load the same model family to continue it.")
        history = runtime.normalized_latent(video, variant_name, "video")
        check_size(*latent_utils.pixel_size(history)[::-1], source="'video'")
        return history[:1]
    if vae is None:
        raise ValueError("'images' needs the 'vae' input too (Pyramid Flow VAE Loader), to encode the frames.")
    check_image(images, "images")
    frames, note = fit_frames(images, source="'images' (after cropping to multiples of 64)")
    if note:
        log.info("Pyramid Flow Extend: %s", note)
        runtime.send_text(node_id, note)
    return frames_to_history(runtime.vae_placement(vae), frames, get_variant(variant_name),
                             callback=runtime.vae_progress())


NODES = [PyramidFlowVideoSampler, PyramidFlowVideoExtend]
