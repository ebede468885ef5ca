"""What the nodes share at run time: ComfyUI's placement of the pack's models, progress and previews, and the
conversions between ComfyUI's LATENT / CONDITIONING and the library's tensors.

The steps of a run are the library's (:mod:`pyramid_flow.orchestration`, the same the command line calls); a
node module holds its schema and a short ``process`` that calls them with what this module provides.
"""

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import folder_paths
import latent_preview

from ..pyramid_flow import orchestration
from ..pyramid_flow.latents import LATENT_CHANNELS, denormalize, normalize
from ..pyramid_flow.orchestration import SamplingSettings, TimedEmbeddings
from ..pyramid_flow.placement import Placement
from ..pyramid_flow.resume import ResumeState, kept_frames, prune, tensor_digest
from ..pyramid_flow.sampler import Conditioning, StepInfo
from ..pyramid_flow.text import TextEmbeddings
from ..pyramid_flow.text.embeddings import TEXT_TOKENS
from ..pyramid_flow.variants import VARIANTS, Variant, get_variant
from . import models
from .common import T5_EOS, pad_embeddings, t5_window
from .types import CFG_DEVICE_KEY, COMPILE_OPTIONS_KEY, NORMALIZED_KEY, SEED_KEY, START_SECONDS_KEY, VARIANT_KEY

log = logging.getLogger("pyramid_flow")


# --- placement -----------------------------------------------------------------------------------------------


class ComfyPlacement(Placement):
    """A model of the pack managed by ComfyUI: loaded with ``load_models_gpu`` and the step's memory estimate;
    cached allocator memory is given back when a step fails or is interrupted (the model stays managed)."""

    def __init__(self, patcher, module: torch.nn.Module, force_full_load: bool = False):
        self.patcher, self.module, self.force_full_load = patcher, module, force_full_load
        self.device = torch.device(patcher.load_device)

    @contextmanager
    def loaded(self, memory_required: int = 0) -> Iterator[torch.nn.Module]:
        mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=self.force_full_load)
        try:
            yield self.module
        except BaseException:
            mm.soft_empty_cache()
            raise

    def free_cache(self) -> None:
        mm.soft_empty_cache(True)


def dit_placement(model) -> ComfyPlacement:
    return ComfyPlacement(model, model.model.diffusion_model)


def vae_placement(vae) -> ComfyPlacement:
    return ComfyPlacement(vae, vae.model.vae)


def second_placement(model, settings: SamplingSettings) -> Optional[ComfyPlacement]:
    """The copy of the DiT that runs the positive CFG half ('Pyramid Flow Multi-GPU'), or None."""
    device = model.model_options.get(CFG_DEVICE_KEY)
    if device is None:
        return None
    if settings.guidance_scale <= 0:
        log.info("Pyramid Flow Multi-GPU: guidance is off (scale 0), so %s is not used.", device)
        return None
    return dit_placement(models.device_copy(model, torch.device(device)))


def text_encoder_placement(text_encoder) -> ComfyPlacement:
    """The official transformers encoders are not comfy.ops modules, so they cannot be partially loaded."""
    return ComfyPlacement(text_encoder, text_encoder.model.encoder, force_full_load=True)


# --- progress, previews, status ------------------------------------------------------------------------------


class PyramidFlowLatentFormat(comfy.latent_formats.LatentFormat):
    """For live previews only: 16-channel latents of Pyramid Flow's VAE (initialised from SD3's, so SD3's
    latent-to-RGB factors give a usable colour preview)."""

    latent_channels = LATENT_CHANNELS
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


def step_callback(device) -> Callable[[StepInfo], None]:
    """Progress over every DiT step of every unit, a preview of the frame being generated, and an interrupt check
    per step (the progress hook raises InterruptProcessingException once /interrupt was posted)."""
    previewer = latent_preview.get_previewer(device, PyramidFlowLatentFormat())
    bars = []

    def callback(info: StepInfo) -> None:
        if not bars:
            bars.append(comfy.utils.ProgressBar(info.total))
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", info.latent[:1].float())
        bars[0].update_absolute(info.done, info.total, preview)
        mm.throw_exception_if_processing_interrupted()

    return callback


def vae_progress() -> Callable[[int, int], None]:
    """A VAE callback(done, total) that drives the node's progress bar and checks for an interrupt per piece."""
    pbar = comfy.utils.ProgressBar(1)

    def callback(done: int, total: int) -> None:
        pbar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    return callback


# --- sampling ------------------------------------------------------------------------------------------------


def check_text_dims(dit_model, cond: TextEmbeddings, variant_of_cond: Optional[str]) -> None:
    """A clear error for text encoded by the other family's encoders."""
    config = getattr(dit_model.info, "config", {}) or {}
    context_dim, pooled_dim = config.get("joint_attention_dim"), config.get("pooled_projection_dim")
    got = (cond.prompt_embeds.shape[-1], cond.pooled.shape[-1])
    if (context_dim and got[0] != context_dim) or (pooled_dim and got[1] != pooled_dim):
        needs = "; ".join(f"{v.display_name} needs {v.comfy_clip_loader}" for v in VARIANTS.values())
        raise ValueError(
            f"The text conditioning ({variant_of_cond or 'unknown'} encoders: T5 {got[0]}, pooled {got[1]}) does not "
            f"fit this {dit_model.variant_name} DiT (T5 {context_dim}, pooled {pooled_dim}). {needs}.")


RESUME_FOLDER = "pyramid_flow_resume"  # under ComfyUI's user directory: its temp folder is wiped at every start
RESUME_LIMIT_BYTES = 4 * 2**30  # the states of stopped runs kept at most; the oldest go first


def resume_state(model, cond: Conditioning, uncond: TextEmbeddings, settings: SamplingSettings,
                 size, start: Optional[torch.Tensor]) -> Optional[ResumeState]:
    """Where a Sampler or Extend run keeps its finished frames: a folder keyed by everything they depend on (the
    model, the conditioning, the seed, the size, steps and guidance, the first frame or video continued), so the
    same inputs queued again find it, and any change starts fresh. None with the official noise."""
    if not orchestration.resumable(settings):
        return None
    identity = orchestration.run_identity(model.model.diffusion_model, model.model.variant_name, settings, size,
                                          orchestration.conditioning_digest(cond, uncond), tensor_digest(start))
    return ResumeState.keyed(os.path.join(folder_paths.get_user_directory(), RESUME_FOLDER), identity)


def sample(model, cond: Conditioning, uncond: TextEmbeddings, settings: SamplingSettings, latent_frames: int,
           node_id=None, **start) -> torch.Tensor:
    """:func:`pyramid_flow.orchestration.sample` on a DiT ModelPatcher: ComfyUI's placement, the compute dtype the
    loader chose, progress with previews, the compile options of 'Pyramid Flow Torch Compile', and a resume state:
    an interrupted, crashed or out-of-memory run queued again continues after its finished frames."""
    placement = dit_placement(model)
    first = start.get("image_moments", start.get("history"))
    size = orchestration.video_size(start.get("size"), start.get("image_moments"), start.get("history"))
    resume = resume_state(model, cond, uncond, settings, size, first)
    if resume is not None:
        prune(os.path.dirname(resume.folder), RESUME_LIMIT_BYTES, keep=resume.folder)
        kept = kept_frames(resume.folder)
        if kept:
            message = f"Resuming: {kept} latent frames of a stopped run with these inputs are kept; continuing after them."
            log.info("Pyramid Flow: %s", message)
            send_text(node_id, message)
    latents = orchestration.sample(placement, cond, uncond, settings, latent_frames=latent_frames,
                                   dtype=model.model.compute_dtype, callback=step_callback(placement.device),
                                   compile_options=model.model_options.get(COMPILE_OPTIONS_KEY), resume=resume,
                                   second=second_placement(model, settings), **start)
    if resume is not None:
        resume.clear()
    return latents


# --- LATENT --------------------------------------------------------------------------------------------------


def latent_5d(samples: dict, name: str = "samples") -> torch.Tensor:
    """The VAE-space latent [B, 16, T, h, w] of a LATENT input, with a clear error for other models' latents."""
    z = samples["samples"]
    z = z if z.dim() == 5 else z.unsqueeze(2)
    if z.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"The input '{name}' has {z.shape[1]} channels; Pyramid Flow latents have {LATENT_CHANNELS} "
                         "(from the Pyramid Flow Sampler or VAE Encode). Core VAE Decode is for other models' latents.")
    return z


def normalized_latent(samples: dict, variant_name: str, name: str) -> torch.Tensor:
    """The DiT-space latent of a LATENT: the sampler's own copy when it still matches ``samples`` (exact), else the
    VAE-space samples normalised (a float32 rounding away from the sampler's numbers)."""
    z = latent_5d(samples, name)
    variant = get_variant(variant_name)
    carried: Optional[torch.Tensor] = samples.get(NORMALIZED_KEY)
    if carried is not None and carried.shape == z.shape and torch.allclose(
            normalize(z.float(), variant), carried.float(), rtol=1e-4, atol=1e-4):
        return carried.float()
    return normalize(z.float(), variant)


def latent_output(latents: torch.Tensor, variant_name: str, seed: int) -> dict:
    """Normalised latents -> a LATENT: VAE-space samples, plus the normalised copy for an exact continuation."""
    normalized = latents.float().to(mm.intermediate_device())
    samples = denormalize(normalized, get_variant(variant_name))
    return {"samples": samples, NORMALIZED_KEY: normalized, VARIANT_KEY: variant_name, SEED_KEY: seed}


# --- text ----------------------------------------------------------------------------------------------------


def clip_variant(clip) -> Variant:
    """The variant whose sub-encoders the CLIP object has (the one needing most, if several fit)."""
    model = clip.cond_stage_model
    fitting = [v for v in VARIANTS.values() if all(getattr(model, part, None) is not None for part in v.comfy_clip)]
    if not fitting:
        loaders = "; ".join(f"{v.display_name}: {v.comfy_clip_loader}" for v in VARIANTS.values())
        raise TypeError(f"This CLIP lacks the text encoders Pyramid Flow needs. {loaders}.")
    return max(fitting, key=lambda v: len(v.comfy_clip))


def _t5_pairs(pairs):
    """ComfyUI (token, weight) pairs of one T5 batch -> the official 128-token window (EOS kept, padding dropped)."""
    ids = [p[0] for p in pairs if isinstance(p[0], int)]
    weights = [p[1] for p in pairs if isinstance(p[0], int)]
    window, n = t5_window(ids)
    return [(tok, weights[i] if i < n - 1 else 1.0) for i, tok in enumerate(window[:-1])] + [(T5_EOS, 1.0)], n


def encode_with_clip(clip, text: str) -> TextEmbeddings:
    """Encode one prompt with a ComfyUI CLIP object without leaving any change on it.

    The tokenizer is only read. The sub-encoders' options (projected pooled output) are set for this call and
    reset afterwards, exactly as ``CLIP.encode_from_tokens`` resets them before every encode. T5 gets only the
    real tokens (no padding), so its un-masked attention equals the official masked attention on those tokens.
    """
    clip = clip.clone()
    variant = clip_variant(clip)
    tokens = clip.tokenize(text)
    model = clip.cond_stage_model
    t5_pairs, n = _t5_pairs(tokens["t5xxl"][0])
    clip.load_model()
    model.reset_clip_options()
    try:
        t5_hidden = model.t5xxl.encode_token_weights([t5_pairs])[0]
        pooled = []
        for part in variant.comfy_clip[:-1]:  # the CLIPs, in pooled order; T5 is last
            encoder = getattr(model, part)
            encoder.set_clip_options({"projected_pooled": variant.clip_projected})
            pooled.append(encoder.encode_token_weights([tokens[part.split("_")[1]][0]])[1])
    finally:
        model.reset_clip_options()
    prompt_embeds, mask = pad_embeddings(t5_hidden.float(), n, TEXT_TOKENS)
    return TextEmbeddings(prompt_embeds=prompt_embeds, attention_mask=mask, pooled=torch.cat(pooled, dim=-1).float())


def text_encoder_for(clip, text_encoder) -> Tuple[Variant, Callable[[List[str]], TextEmbeddings]]:
    """The variant and an encode(texts) -> embeddings batch of exactly one of the two encoder sources."""
    if (clip is None) == (text_encoder is None):
        raise ValueError("Connect exactly one text encoder: a CLIP (DualCLIPLoader flux / TripleCLIPLoader) or a "
                         "Pyramid Flow Text Encoder Loader output.")
    if clip is not None:
        return clip_variant(clip), lambda texts: TextEmbeddings.cat([encode_with_clip(clip, t) for t in texts])

    def encode(texts: List[str]) -> TextEmbeddings:
        with text_encoder_placement(text_encoder).loaded() as encoder, torch.no_grad():
            return encoder.encode(texts)

    return get_variant(text_encoder.model.variant_name), encode


# --- CONDITIONING --------------------------------------------------------------------------------------------


def to_conditioning(emb: TextEmbeddings, variant: Variant, **extra) -> list:
    device = mm.intermediate_device()
    return [[emb.prompt_embeds.to(device, torch.float32), {
        "pooled_output": emb.pooled.to(device, torch.float32),
        "attention_mask": emb.attention_mask.to(device),
        VARIANT_KEY: variant.name,
        **extra,
    }]]


def _embeddings(entry, what: str) -> TextEmbeddings:
    cond, extra = entry
    mask = extra.get("attention_mask")
    if VARIANT_KEY not in extra or mask is None or cond.shape[1] != TEXT_TOKENS or "pooled_output" not in extra:
        raise TypeError(
            f"The {what} conditioning was not made by 'Pyramid Flow Text Encode' (got {tuple(cond.shape)}). "
            "Core CLIPTextEncode output has no 128-token T5 mask; connect the Pyramid Flow text encode node.")
    return TextEmbeddings(prompt_embeds=cond, attention_mask=mask.to(torch.int64), pooled=extra["pooled_output"])


def conditioning_to_embeddings(conditioning, what: str) -> TextEmbeddings:
    """CONDITIONING from Pyramid Flow Text Encode -> TextEmbeddings; a clear error for anything else."""
    if not conditioning:
        raise ValueError(f"The {what} conditioning is empty.")
    if len(conditioning) > 1:
        raise ValueError(f"The {what} conditioning holds {len(conditioning)} prompts; it must be one prompt (a prompt "
                         "schedule is for 'positive' only).")
    return _embeddings(conditioning[0], what)


def conditioning_to_timed(conditioning) -> TimedEmbeddings:
    """The positive CONDITIONING -> timed embeddings: one prompt from 0 s, or the entries of a prompt schedule."""
    if not conditioning:
        raise ValueError("The positive conditioning is empty.")
    if len(conditioning) == 1:
        return [(0.0, _embeddings(conditioning[0], "positive"))]
    times = [entry[1].get(START_SECONDS_KEY) for entry in conditioning]
    if any(seconds is None for seconds in times):
        raise ValueError("The positive conditioning holds several prompts without times: make a prompt schedule with "
                         "'Pyramid Flow Prompt Schedule', or connect one prompt.")
    return [(seconds, _embeddings(entry, "positive")) for seconds, entry in zip(times, conditioning)]


def conditioning_variant(conditioning) -> Optional[str]:
    return conditioning[0][1].get(VARIANT_KEY) if conditioning else None
