"""Text encode node: prompt + negative prompt -> two CONDITIONINGs shaped the way Pyramid Flow's DiT expects.

Two sources of encoders:
- ComfyUI's own CLIP object (DualCLIPLoader type flux: clip_l + t5xxl for miniFLUX; TripleCLIPLoader: clip_l +
  clip_g + t5xxl for SD3), so the files users already have are reused;
- the official transformers encoders (PyramidFlowTextEncoderLoader).

Either way the result is T5 hidden states cut/padded to 128 tokens with their mask, and the pooled CLIP vector
(miniFLUX: CLIP-L un-projected 768; SD3: CLIP-L and CLIP-G projected, 2048).
"""

from typing import Optional

import torch

import comfy.model_management as mm

from ..pyramid_flow.pipeline import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX, effective_prompts
from ..pyramid_flow.text import TextEmbeddings
from .common import T5_EOS, T5_TOKENS, pad_embeddings, t5_window
from .loaders import TEXT_ENCODER_TYPE

VARIANT_KEY = "pyramid_flow_variant"


def _t5_pairs(pairs):
    """ComfyUI (token, weight) pairs of one T5 batch -> the official 128-token window (EOS kept, padding dropped)."""
    ids = [p[0] for p in pairs if isinstance(p[0], int)]
    weights = [p[1] for p in pairs if isinstance(p[0], int)]
    window, n = t5_window(ids)
    return [(tok, weights[i] if i < n - 1 else 1.0) for i, tok in enumerate(window[:-1])] + [(T5_EOS, 1.0)], n


def clip_variant(clip) -> str:
    model = clip.cond_stage_model
    if getattr(model, "t5xxl", None) is None or getattr(model, "clip_l", None) is None:
        raise TypeError(
            "This CLIP has no T5-XXL + CLIP-L pair. For miniFLUX load clip_l and t5xxl with DualCLIPLoader "
            "(type 'flux'); for SD3 load clip_l, clip_g and t5xxl with TripleCLIPLoader.")
    return "sd3" if getattr(model, "clip_g", None) is not None else "miniflux"


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
        model.clip_l.set_clip_options({"projected_pooled": variant == "sd3"})
        pooled = model.clip_l.encode_token_weights([tokens["l"][0]])[1]
        if variant == "sd3":
            model.clip_g.set_clip_options({"projected_pooled": True})
            pooled = torch.cat([pooled, model.clip_g.encode_token_weights([tokens["g"][0]])[1]], dim=-1)
    finally:
        model.reset_clip_options()
    prompt_embeds, mask = pad_embeddings(t5_hidden.float(), n, T5_TOKENS)
    return TextEmbeddings(prompt_embeds=prompt_embeds, attention_mask=mask, pooled=pooled.float())


def encode_with_text_encoder(patcher, text: str) -> TextEmbeddings:
    """Encode with the official transformers encoders, loaded fully through load_models_gpu (they are not comfy.ops
    modules, so they cannot be partially loaded)."""
    mm.load_models_gpu([patcher], force_full_load=True)
    with torch.no_grad():
        return patcher.model.encoder.encode([text])


def to_conditioning(emb: TextEmbeddings, variant: str):
    device = mm.intermediate_device()
    return [[emb.prompt_embeds.to(device, torch.float32), {
        "pooled_output": emb.pooled.to(device, torch.float32),
        "attention_mask": emb.attention_mask.to(device),
        VARIANT_KEY: variant,
    }]]


def conditioning_to_embeddings(conditioning, what: str) -> TextEmbeddings:
    """CONDITIONING from PyramidFlowTextEncode -> TextEmbeddings; a clear error for anything else."""
    if not conditioning:
        raise ValueError(f"The {what} conditioning is empty.")
    cond, extra = conditioning[0][0], conditioning[0][1]
    mask = extra.get("attention_mask")
    if VARIANT_KEY not in extra or mask is None or cond.shape[1] != T5_TOKENS or "pooled_output" not in extra:
        raise TypeError(
            f"The {what} conditioning was not made by 'Pyramid Flow Text Encode' (got {tuple(cond.shape)}). "
            "Core CLIPTextEncode output has no 128-token T5 mask; connect the Pyramid Flow text encode node.")
    return TextEmbeddings(prompt_embeds=cond, attention_mask=mask.to(torch.int64), pooled=extra["pooled_output"])


def conditioning_variant(conditioning) -> Optional[str]:
    return conditioning[0][1].get(VARIANT_KEY) if conditioning else None


class PyramidFlowVideoTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {
                    "multiline": True, "dynamicPrompts": True,
                    "tooltip": "What the video shows. T5 reads at most 128 tokens (the rest is cut, as in the "
                               "official pipeline); CLIP reads the first 77."}),
                "negative_prompt": ("STRING", {
                    "multiline": True, "dynamicPrompts": True, "default": DEFAULT_NEGATIVE_PROMPT,
                    "tooltip": "What to steer away from (used when guidance > 0). The default is the official "
                               "pipeline's; an empty box encodes the empty string."}),
                "add_quality_suffix": ("BOOLEAN", {
                    "default": True,
                    "tooltip": f"Append '{PROMPT_SUFFIX}' to the prompt, as the official pipeline always does."}),
            },
            "optional": {
                "clip": ("CLIP", {
                    "tooltip": "ComfyUI text encoders: DualCLIPLoader type flux (clip_l + t5xxl) for miniFLUX, "
                               "TripleCLIPLoader (clip_l + clip_g + t5xxl) for SD3. Never modified."}),
                "text_encoder": (TEXT_ENCODER_TYPE, {
                    "tooltip": "Or the official encoders from 'Pyramid Flow Text Encoder Loader'. Connect exactly "
                               "one of clip / text_encoder."}),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Prompt conditioning for the Pyramid Flow Sampler.", "Negative prompt conditioning.")
    FUNCTION = "encode"
    CATEGORY = "PyramidFlow/conditioning"
    DESCRIPTION = ("Encode a prompt and a negative prompt for Pyramid Flow: T5 cut/padded to 128 tokens with its "
                   "mask, plus the pooled CLIP vector of the variant.")

    def encode(self, prompt, negative_prompt, add_quality_suffix=True, clip=None, text_encoder=None):
        if (clip is None) == (text_encoder is None):
            raise ValueError("Connect exactly one text encoder: a CLIP (DualCLIPLoader flux / TripleCLIPLoader) or a "
                             "Pyramid Flow Text Encoder Loader output.")
        prompts, negatives = effective_prompts(prompt, negative_prompt, add_quality_suffix)
        if clip is not None:
            variant = clip_variant(clip)
            embs = [encode_with_clip(clip, prompts[0]), encode_with_clip(clip, negatives[0])]
        else:
            variant = text_encoder.model.variant_name
            embs = [encode_with_text_encoder(text_encoder, prompts[0]), encode_with_text_encoder(text_encoder, negatives[0])]
        return tuple(to_conditioning(e, variant) for e in embs)
