"""What differs between the two released model families (SD3 MMDiT and miniFLUX).

Latent normalisation constants are the official pipeline's (not the VAE's ``scaling_factor``): frame 0 of a
latent uses the image constants, later frames the video constants.
"""

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class LatentNorm:
    shift: float
    scale: float


@dataclass(frozen=True)
class Variant:
    name: str  # our name: "sd3" or "miniflux"
    official_name: str  # the official pipeline's model_name
    image_norm: LatentNorm  # frame 0
    video_norm: LatentNorm  # frames >= 1
    text_encoder_folders: Tuple[str, ...]  # official HF folders, in encoder order
    tokenizer_folders: Tuple[str, ...]


SD3 = Variant(
    name="sd3",
    official_name="pyramid_mmdit",
    image_norm=LatentNorm(shift=0.1490, scale=1 / 1.8415),
    video_norm=LatentNorm(shift=-0.2343, scale=1 / 3.0986),
    text_encoder_folders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    tokenizer_folders=("tokenizer", "tokenizer_2", "tokenizer_3"),
)

MINIFLUX = Variant(
    name="miniflux",
    official_name="pyramid_flux",
    image_norm=LatentNorm(shift=-0.04, scale=1 / 1.8726),
    video_norm=LatentNorm(shift=-0.2343, scale=1 / 3.0986),
    text_encoder_folders=("text_encoder", "text_encoder_2"),
    tokenizer_folders=("tokenizer", "tokenizer_2"),
)

VARIANTS = {v.name: v for v in (SD3, MINIFLUX)}


def get_variant(name: str) -> Variant:
    """Accepts our names and the official model_name values."""
    for variant in VARIANTS.values():
        if name in (variant.name, variant.official_name):
            return variant
    raise ValueError(f"Unknown Pyramid Flow variant '{name}': expected one of {sorted(VARIANTS)}.")
