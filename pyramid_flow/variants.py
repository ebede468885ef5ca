"""What differs between the Pyramid Flow model families: one :class:`Variant` per family, registered by name.

A variant is a registration here plus its DiT class registered under the same name
(:func:`pyramid_flow.dit.register_dit`); loading, detection, downloads, the text encoders, the error messages and
the ComfyUI nodes read everything else from these two.

Latent normalisation constants are the official pipeline's (not the VAE's ``scaling_factor``): frame 0 of a
latent uses the image constants, later frames the video constants.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple


@dataclass(frozen=True)
class LatentNorm:
    shift: float
    scale: float


@dataclass(frozen=True)
class Variant:
    name: str  # our name, e.g. "sd3"
    display_name: str  # for messages, e.g. "SD3"
    official_name: str  # the official pipeline's model_name
    repo_id: str  # the Hugging Face repository with the official folders
    image_norm: LatentNorm  # frame 0
    video_norm: LatentNorm  # frames >= 1
    dit_folders: Tuple[str, ...]  # the DiT folders of the repository
    dit_keys: Tuple[str, ...]  # state-dict key fragments of which any one marks this variant's DiT
    text_encoder_folders: Tuple[str, ...]  # official HF folders, CLIP encoders first, T5 last
    tokenizer_folders: Tuple[str, ...]
    clip_projected: bool  # pooled = the CLIPs' projected outputs (CLIPTextModelWithProjection), else the pooler output
    pooled_content: str  # what the pooled vector is, for error messages about embeddings computed elsewhere
    comfy_clip: Tuple[str, ...]  # the sub-encoders of ComfyUI's CLIP object this variant needs
    comfy_clip_loader: str  # the core loader that builds that CLIP, for messages

    @property
    def repo_folder(self) -> str:
        """The repository's folder name under models/pyramidflow/ (its name without the owner)."""
        return self.repo_id.split("/")[-1]


VARIANTS: Dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Make ``variant`` known everywhere. A later registration is tried first when a checkpoint is identified."""
    VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """Accepts our names, the official model_name values and the repository ids."""
    for variant in VARIANTS.values():
        if name in (variant.name, variant.official_name, variant.repo_id, variant.repo_folder):
            return variant
    raise ValueError(f"Unknown Pyramid Flow variant '{name}': expected one of {sorted(VARIANTS)} or a repository "
                     f"({', '.join(v.repo_id for v in VARIANTS.values())}).")


def variant_of_dit_keys(keys: Iterable[str]) -> List[Variant]:
    """The variants whose DiT key fragments appear in ``keys`` (at a '.' boundary), latest registration first."""
    keys = list(keys)

    def has(fragment: str) -> bool:
        return any(key.startswith(fragment) or "." + fragment in key for key in keys)

    return [v for v in reversed(list(VARIANTS.values())) if any(has(fragment) for fragment in v.dit_keys)]


SD3 = register_variant(Variant(
    name="sd3",
    display_name="SD3",
    official_name="pyramid_mmdit",
    repo_id="rain1011/pyramid-flow-sd3",
    image_norm=LatentNorm(shift=0.1490, scale=1 / 1.8415),
    video_norm=LatentNorm(shift=-0.2343, scale=1 / 3.0986),
    dit_folders=("diffusion_transformer_384p", "diffusion_transformer_768p"),
    dit_keys=("pos_embed.proj.weight",),
    text_encoder_folders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    tokenizer_folders=("tokenizer", "tokenizer_2", "tokenizer_3"),
    clip_projected=True,
    pooled_content="the projected pooled outputs of CLIP-L and CLIP-G concatenated (768 + 1280 = 2048 when released)",
    comfy_clip=("clip_l", "clip_g", "t5xxl"),
    comfy_clip_loader="TripleCLIPLoader (clip_l + clip_g + t5xxl)",
))

MINIFLUX = register_variant(Variant(
    name="miniflux",
    display_name="miniFLUX",
    official_name="pyramid_flux",
    repo_id="rain1011/pyramid-flow-miniflux",
    image_norm=LatentNorm(shift=-0.04, scale=1 / 1.8726),
    video_norm=LatentNorm(shift=-0.2343, scale=1 / 3.0986),
    dit_folders=("diffusion_transformer_384p", "diffusion_transformer_768p", "diffusion_transformer_image"),
    dit_keys=("single_transformer_blocks.", "x_embedder.weight"),
    text_encoder_folders=("text_encoder", "text_encoder_2"),
    tokenizer_folders=("tokenizer", "tokenizer_2"),
    clip_projected=False,
    pooled_content="the un-projected pooler output of CLIP-L (768 for the released encoder)",
    comfy_clip=("clip_l", "t5xxl"),
    comfy_clip_loader="DualCLIPLoader type flux (clip_l + t5xxl)",
))
