"""What a state dict holds, read from its key names, never from a file name; and what a DiT folder name says.

Keys are matched at a ``.`` boundary, so a wrapper prefix (``model.diffusion_model.``, ``vae.``, ...) does
not hide what a file is. The DiT key fragments of each model family come from its registration
(:mod:`pyramid_flow.variants`).
"""

import os
from typing import Iterable, Mapping, Optional

from ..variants import VARIANTS, variant_of_dit_keys

DIT_KIND_PREFIX = "dit_"  # DiT kinds are "dit_<variant name>"
DESCRIPTIONS = {
    "vae": "a Pyramid Flow VAE checkpoint",
    "clip": "a CLIP text encoder checkpoint",
    "t5": "a T5 text encoder checkpoint",
    "unknown": "not a Pyramid Flow checkpoint",
}


def _has(keys: Iterable[str], fragment: str) -> bool:
    """Whether a key starts with ``fragment`` or contains it right after a ``.``."""
    return any(key.startswith(fragment) or "." + fragment in key for key in keys)


def identify_checkpoint(state_dict: Mapping) -> str:
    """'dit_<variant>' (e.g. 'dit_sd3'), 'vae', 'clip', 't5' or 'unknown' for a state dict (only its keys are
    read)."""
    keys = list(state_dict)
    variants = variant_of_dit_keys(keys)
    if variants:
        return DIT_KIND_PREFIX + variants[0].name
    if _has(keys, "encoder.conv_in.conv.weight") or _has(keys, "decoder.conv_in.conv.weight"):
        return "vae"
    if _has(keys, "text_model.embeddings.token_embedding.weight"):
        return "clip"
    if _has(keys, "encoder.block.0.layer.0.SelfAttention.q.weight"):
        return "t5"
    return "unknown"


def dit_variant_name(kind: str) -> Optional[str]:
    """The variant name of a DiT kind ('dit_sd3' -> 'sd3'), None for other kinds."""
    return kind[len(DIT_KIND_PREFIX):] if kind.startswith(DIT_KIND_PREFIX) else None


def describe(kind: str) -> str:
    """A phrase for error messages, e.g. 'a Pyramid Flow VAE checkpoint'."""
    name = dit_variant_name(kind)
    return f"a Pyramid Flow {VARIANTS[name].display_name} DiT checkpoint" if name else DESCRIPTIONS[kind]


def checkpoint_kind(name: str) -> Optional[str]:
    """'384p' / '768p' / 'image' from a DiT folder or file name, when the name says it (the weights cannot tell:
    the three official DiTs share one architecture)."""
    name = os.path.basename(os.path.normpath(name)).lower()
    for kind in ("768", "384", "image"):
        if kind in name:
            return kind if kind == "image" else kind + "p"
    return None
