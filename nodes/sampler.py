"""The Pyramid Flow sampler node and the image-to-video conditioning node."""

import logging

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview

from ..pyramid_flow import latents as latent_utils
from ..pyramid_flow.noise import NoiseSource
from ..pyramid_flow.pipeline import ENCODE_TILE
from ..pyramid_flow.sampler import PyramidSampler, count_dit_steps, draw_latent_noise, draw_posterior_sample
from ..pyramid_flow.scheduler import PyramidFlowScheduler
from ..pyramid_flow.text import TextEmbeddings
from ..pyramid_flow.variants import get_variant
from . import models
from .common import (MAX_SECONDS, MAX_SIZE, SIZE_STEP, check_image, check_size, describe_duration, first_frame_input,
                     max_tokens, memory_estimate_dit, stage_list)
from .loaders import MODEL_TYPE, VAE_TYPE
from .text import VARIANT_KEY, conditioning_to_embeddings, conditioning_variant

log = logging.getLogger("pyramid_flow")
MOMENTS_KEY = "pyramid_flow_moments"


class PyramidFlowLatentFormat(comfy.latent_formats.LatentFormat):
    """For live previews only: 16-channel latents of Pyramid Flow's VAE (initialised from SD3's, so SD3's
    latent-to-RGB factors give a usable colour preview)."""

    latent_channels = 16
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


def make_step_callback(total: int, device):
    """Progress over every DiT step of every unit, a preview of the frame being generated, and an interrupt check
    per step (the progress hook raises InterruptProcessingException once /interrupt was posted)."""
    pbar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(device, PyramidFlowLatentFormat())

    def callback(info):
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", info.latent[:1].float())
        pbar.update_absolute(info.done, info.total, preview)
        mm.throw_exception_if_processing_interrupted()

    return callback


def check_text_dims(dit_model, cond: TextEmbeddings, variant_of_cond) -> None:
    config = getattr(dit_model.info, "config", {}) or {}
    context_dim, pooled_dim = config.get("joint_attention_dim"), config.get("pooled_projection_dim")
    got = (cond.prompt_embeds.shape[-1], cond.pooled.shape[-1])
    if (context_dim and got[0] != context_dim) or (pooled_dim and got[1] != pooled_dim):
        raise ValueError(
            f"The text conditioning ({variant_of_cond or 'unknown'} encoders: T5 {got[0]}, pooled {got[1]}) does not "
            f"fit this {dit_model.variant_name} DiT (T5 {context_dim}, pooled {pooled_dim}). miniFLUX needs "
            "DualCLIPLoader type flux (clip_l + t5xxl); SD3 needs TripleCLIPLoader (clip_l + clip_g + t5xxl).")


def first_frame_latent(image_latent: dict, noise, variant, device, dtype) -> torch.Tensor:
    """Normalised first-frame latent: a posterior sample when the I2V node passed moments (official order: drawn
    after the video noise), else the first frame of a raw LATENT."""
    moments = image_latent.get(MOMENTS_KEY)
    if moments is not None:
        z = draw_posterior_sample(noise, moments.to(device=device, dtype=dtype))
    else:
        z = image_latent["samples"]
        z = (z if z.dim() == 5 else z.unsqueeze(2))[:, :, :1].to(device=device, dtype=dtype)
    if z.shape[1] != 16:
        raise ValueError(f"The image latent has {z.shape[1]} channels; Pyramid Flow latents have 16. Use "
                         "'Pyramid Flow Image To Video' or 'Pyramid Flow VAE Encode'.")
    return latent_utils.normalize(z, variant)


def _int(default, minimum, maximum, tooltip, step=1):
    return ("INT", {"default": default, "min": minimum, "max": maximum, "step": step, "tooltip": tooltip})


def _float(default, minimum, maximum, step, tooltip):
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": step, "round": 0.01,
                      "tooltip": tooltip})


class PyramidFlowVideoSampler:
    @classmethod
    def INPUT_TYPES(cls):
        stage = "Steps of pyramid stage {} (1/4, 1/2, full resolution) for the {}."
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "From 'Pyramid Flow Model Loader'."}),
                "positive": ("CONDITIONING", {"tooltip": "'positive' of 'Pyramid Flow Text Encode'."}),
                "negative": ("CONDITIONING", {"tooltip": "'negative' of 'Pyramid Flow Text Encode'."}),
                "width": _int(640, SIZE_STEP, MAX_SIZE, "Video width, a multiple of 64. Trained: 640 (384p), "
                              "1280 (768p). Ignored for image-to-video (the image latent sets the size).", SIZE_STEP),
                "height": _int(384, SIZE_STEP, MAX_SIZE, "Video height, a multiple of 64. Trained: 384 (384p), 768 "
                               "(768p).", SIZE_STEP),
                "duration_seconds": _float(5.0, 0.0, MAX_SECONDS, 0.1, "Length at 24 fps, rounded up to whole "
                                           "latent frames T: frames = 8*T - 7 (5 s -> 121 frames, 10 s -> 241). "
                                           "The exact count is shown on the node and returned as 'frames'. 0 = "
                                           "one image. Trained maxima: 5 s (384p), 10 s (768p)."),
                "first_frame_steps_1": _int(20, 1, 200, stage.format(1, "first frame")),
                "first_frame_steps_2": _int(20, 1, 200, stage.format(2, "first frame")),
                "first_frame_steps_3": _int(20, 1, 200, stage.format(3, "first frame")),
                "video_steps_1": _int(10, 1, 200, stage.format(1, "later frames (and every frame in image-to-video)")),
                "video_steps_2": _int(10, 1, 200, stage.format(2, "later frames (and every frame in image-to-video)")),
                "video_steps_3": _int(10, 1, 200, stage.format(3, "later frames (and every frame in image-to-video)")),
                "guidance_scale": _float(7.0, 0.0, 30.0, 0.1, "CFG of the first frame (official: 7 for 384p, 9 "
                                         "for 768p). 0 turns CFG off (no negative pass)."),
                "video_guidance_scale": _float(5.0, 0.0, 30.0, 0.1, "CFG of the later frames (official: 5; "
                                               "lower it if motion fades or blurs)."),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of every noise draw (CPU generator: same video on any device)."}),
            },
            "optional": {
                "image_latent": ("LATENT", {"tooltip": "Image-to-video: 'Pyramid Flow Image To Video' output (the "
                                            "first frame). Leave empty for text-to-video."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("LATENT", "INT")
    RETURN_NAMES = ("latent", "frames")
    OUTPUT_TOOLTIPS = ("Video latent [1, 16, T, H/8, W/8] in VAE space, for 'Pyramid Flow VAE Decode'.",
                       "Number of video frames the latent decodes to (8*T - 7).")
    FUNCTION = "sample"
    CATEGORY = "PyramidFlow/sampling"
    DESCRIPTION = ("Autoregressive pyramidal flow sampling: each latent frame runs three resolution stages, "
                   "conditioned on the frames before it.")

    def sample(self, model, positive, negative, width, height, duration_seconds, first_frame_steps_1,
               first_frame_steps_2, first_frame_steps_3, video_steps_1, video_steps_2, video_steps_3,
               guidance_scale, video_guidance_scale, seed, image_latent=None, unique_id=None):
        temp = latent_utils.temp_for_seconds(duration_seconds)
        if image_latent is not None:
            height, width = [s * 8 for s in image_latent["samples"].shape[-2:]]
        problem = check_size(width, height)
        if problem:
            raise ValueError(problem)
        warning = latent_utils.resolution_warning(width, height, temp, model.model.checkpoint)
        if warning:
            log.warning("Pyramid Flow: %s", warning)
        send_text(unique_id, describe_duration(duration_seconds) + (f"\n{warning}" if warning else ""))
        cond = conditioning_to_embeddings(positive, "positive")
        uncond = conditioning_to_embeddings(negative, "negative")
        check_text_dims(model.model, cond, conditioning_variant(positive))
        samples = sample_video(
            model, cond, uncond, width=width, height=height, temp=temp,
            first_steps=stage_list(first_frame_steps_1, first_frame_steps_2, first_frame_steps_3),
            video_steps=stage_list(video_steps_1, video_steps_2, video_steps_3), guidance_scale=guidance_scale,
            video_guidance_scale=video_guidance_scale, seed=seed, image_latent=image_latent)
        return ({"samples": samples, VARIANT_KEY: model.model.variant_name}, latent_utils.frames_for_temp(temp))


def sample_video(model, cond, uncond, *, width, height, temp, first_steps, video_steps, guidance_scale,
                 video_guidance_scale, seed, image_latent=None):
    """Load the DiT through ComfyUI's model management and run the pyramid sampler; returns the VAE-space latent
    on the intermediate device (the ``common_ksampler`` of this pack)."""
    wrapper = model.model
    variant = get_variant(wrapper.variant_name)
    compute = wrapper.compute_dtype
    config = getattr(wrapper.info, "config", {}) or {}
    hidden = config.get("num_attention_heads", 24) * config.get("attention_head_dim", 64)
    batch = 2 if guidance_scale > 0 else 1
    memory = memory_estimate_dit(hidden, batch, max_tokens(width, height, temp), mm.dtype_size(compute))
    mm.load_models_gpu([model], memory_required=memory)
    device = model.load_device
    scheduler = PyramidFlowScheduler()
    noise = NoiseSource(seed, gamma=scheduler.gamma)
    i2v = image_latent is not None
    callback = make_step_callback(count_dit_steps(temp, first_steps, video_steps, i2v=i2v), device)
    sampler = PyramidSampler(wrapper.diffusion_model, noise, device, compute, scheduler, callback)
    guidance = dict(guidance_scale=guidance_scale, video_guidance_scale=video_guidance_scale)
    try:
        if i2v:  # the official draw order: the video noise first, then the image posterior sample
            initial = draw_latent_noise(noise, 1, temp, height, width, device, compute)
            first = first_frame_latent(image_latent, noise, variant, device, compute)
            latents = sampler.image_to_video(cond, uncond, image_latent=first, temp=temp, steps=video_steps,
                                             initial_noise=initial, **guidance)
        else:
            latents = sampler.text_to_video(cond, uncond, height=height, width=width, temp=temp,
                                            first_frame_steps=first_steps, video_steps=video_steps, **guidance)
    except BaseException:
        models.free_after_interrupt()
        raise
    return latent_utils.denormalize(latents.float(), variant).to(mm.intermediate_device())


class PyramidFlowVideoImageToVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE_TYPE, {"tooltip": "From 'Pyramid Flow VAE Loader'."}),
                "image": ("IMAGE", {"tooltip": "The first frame. Only the first image of a batch is used."}),
                "width": _int(640, SIZE_STEP, MAX_SIZE, "Video width (multiple of 64): 640 for 384p, 1280 for "
                              "768p checkpoints.", SIZE_STEP),
                "height": _int(384, SIZE_STEP, MAX_SIZE, "Video height (multiple of 64): 384 for 384p, 768 for "
                               "768p.", SIZE_STEP),
                "resize_mode": (["crop", "pad"], {
                    "default": "crop",
                    "tooltip": "Keep the aspect ratio: 'crop' fills the frame and centre-crops (official), 'pad' "
                               "fits the whole image and adds black bars. Never squashes."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("image_latent",)
    OUTPUT_TOOLTIPS = ("First-frame latent for the sampler's image_latent input.",)
    FUNCTION = "encode"
    CATEGORY = "PyramidFlow/conditioning"
    DESCRIPTION = "Resize an image to the video size (aspect preserved) and encode it as the first frame."

    def encode(self, vae, image, width, height, resize_mode):
        check_image(image, "image-to-video image")
        problem = check_size(width, height)
        if problem:
            raise ValueError(problem)
        video = first_frame_input(image[:1], width, height, resize_mode)
        mm.load_models_gpu([vae], memory_required=vae_memory(height, width, 9, 256, vae.model.dtype_))
        module = vae.model.vae
        video = video.to(device=vae.load_device, dtype=vae.model.dtype_)
        with torch.no_grad():
            moments = module.encode(video, tile_sample_min_size=ENCODE_TILE).float()
        moments = moments.to(mm.intermediate_device())
        return ({"samples": moments[:, :16].clone(), MOMENTS_KEY: moments},)


def vae_memory(height: int, width: int, frames: int, tile: int, dtype) -> int:
    """Peak bytes of one VAE tile pass: 128 channels at full resolution, ~8 live tensors, for the frames of one
    temporal window."""
    side_h, side_w = (min(height, tile), min(width, tile)) if tile else (height, width)
    return int(frames * side_h * side_w * 128 * 8 * mm.dtype_size(dtype))
