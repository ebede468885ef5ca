"""What a state dict holds, read from its key names (reference §1.6), never from a file name.

Keys are matched at a ``.`` boundary, so a wrapper prefix (``model.diffusion_model.``, ``vae.``, ...) does
not hide what a file is.
"""

from typing import Iterable, Mapping

DESCRIPTIONS = {
    "dit_sd3": "a Pyramid Flow SD3 DiT checkpoint",
    "dit_miniflux": "a Pyramid Flow miniFLUX DiT checkpoint",
    "vae": "a Pyramid Flow VAE checkpoint",
    "clip": "a CLIP text encoder checkpoint",
    "t5": "a T5 text encoder checkpoint",
    "unknown": "not a Pyramid Flow checkpoint",
}


def _has(keys: Iterable[str], fragment: str) -> bool:
    """Whether a key starts with ``fragment`` or contains it right after a ``.``."""
    return any(key.startswith(fragment) or "." + fragment in key for key in keys)


def identify_checkpoint(state_dict: Mapping) -> str:
    """'dit_sd3', 'dit_miniflux', 'vae', 'clip', 't5' or 'unknown' for a state dict (only its keys are read)."""
    keys = list(state_dict)
    if _has(keys, "single_transformer_blocks.") or _has(keys, "x_embedder.weight"):
        return "dit_miniflux"
    if _has(keys, "pos_embed.proj.weight") or (_has(keys, "norm1_context.linear") and _has(keys, "attn.add_q_proj")):
        return "dit_sd3"
    if _has(keys, "encoder.conv_in.conv.weight") or _has(keys, "decoder.conv_in.conv.weight"):
        return "vae"
    if _has(keys, "text_model.embeddings.token_embedding.weight"):
        return "clip"
    if _has(keys, "encoder.block.0.layer.0.SelfAttention.q.weight"):
        return "t5"
    return "unknown"


def describe(kind: str) -> str:
    """A phrase for error messages, e.g. 'a Pyramid Flow VAE checkpoint'."""
    return DESCRIPTIONS[kind]
