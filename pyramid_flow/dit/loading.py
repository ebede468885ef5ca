"""Loading a Pyramid Flow DiT from an official component folder or a single (kijai-style) file.

The variant comes from the state-dict keys; the config from ``config.json`` when the folder has one, else
from tensor shapes. The model is built on the ``meta`` device and the file's tensors are assigned to it, so
the 8 GB weights are never materialised twice.
"""

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..loading.detect import describe, identify_checkpoint
from ..loading.state_dict import CheckpointError, StateDict, assign_weights, load_state_dict, read_json, strip_prefix
from .base import PyramidDiT
from .flux import FLUX_ROPE_AXES, PyramidFluxDiT
from .mmdit import PyramidMMDiT

MODEL_CLASSES = {"sd3": PyramidMMDiT, "miniflux": PyramidFluxDiT}
VARIANT_OF_KIND = {"dit_sd3": "sd3", "dit_miniflux": "miniflux"}
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
FP8_DTYPES = {getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)}

# kwargs that build_pyramid_dit passes on top of config.json (reference §1.3)
LOADER_OVERRIDES = {
    "sd3": {"use_temporal_causal": True, "interp_condition_pos": True},
    "miniflux": {"use_temporal_causal": True, "interp_condition_pos": True, "axes_dims_rope": FLUX_ROPE_AXES},
}


@dataclass(frozen=True)
class DiTInfo:
    variant: str  # "sd3" or "miniflux"
    config: Dict  # the constructor kwargs used (official config.json keys, loader overrides applied)
    source_dtype: torch.dtype  # the dtype of most weights on disk


def check_dtype(dtype: torch.dtype, operations) -> None:
    if dtype == torch.float16:
        raise ValueError(
            "float16 is not supported for the Pyramid Flow DiT: its activations overflow and give NaN / black "
            "frames (the official README says so too). Use torch.bfloat16 or torch.float32."
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype {dtype} is not a floating-point dtype; use torch.bfloat16 or torch.float32.")
    if dtype in FP8_DTYPES and operations is None:
        raise ValueError(
            f"dtype {dtype} stores weights in fp8, which plain torch.nn layers cannot multiply: pass operations "
            "that cast weights at run time (e.g. comfy.ops.manual_cast), or load in torch.bfloat16."
        )


def count_blocks(state_dict: StateDict, prefix: str) -> int:
    """How many ``prefix<N>.`` blocks the state dict holds."""
    return len({key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)})


def head_dim(state_dict: StateDict) -> int:
    return next(v.shape[0] for k, v in state_dict.items() if k.endswith("attn.norm_q.weight"))


def infer_sd3_config(sd: StateDict) -> Dict:
    dim, in_channels, patch_size, _ = sd["pos_embed.proj.weight"].shape
    table = sd.get("pos_embed.pos_embed")
    grid = math.isqrt(table.shape[1]) if table is not None else 192
    return {
        # The released models keep pos_embed_max_size = 3 * sample_size / patch_size (192 vs 128 / 2).
        "sample_size": grid * patch_size // 3,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "num_layers": count_blocks(sd, "transformer_blocks."),
        "attention_head_dim": head_dim(sd),
        "num_attention_heads": dim // head_dim(sd),
        "caption_projection_dim": sd["context_embedder.weight"].shape[0],
        "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "joint_attention_dim": sd["context_embedder.weight"].shape[1],
        "pos_embed_max_size": grid,
        "qk_norm": "rms_norm",
        "pos_embed_type": "sincos",
    }


def infer_miniflux_config(sd: StateDict) -> Dict:
    dim, in_channels = sd["x_embedder.weight"].shape
    return {
        "in_channels": in_channels,
        "num_layers": count_blocks(sd, "transformer_blocks."),
        "num_single_layers": count_blocks(sd, "single_transformer_blocks."),
        "attention_head_dim": head_dim(sd),
        "num_attention_heads": dim // head_dim(sd),
        "joint_attention_dim": sd["context_embedder.weight"].shape[1],
        "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
    }


def infer_config(variant: str, state_dict: StateDict, path: str) -> Dict:
    """The official config.json values recoverable from tensor shapes."""
    try:
        return (infer_sd3_config if variant == "sd3" else infer_miniflux_config)(state_dict)
    except (KeyError, StopIteration) as err:
        raise CheckpointError(
            f"'{path}' looks like a Pyramid Flow {variant} DiT but lacks tensors needed to read its size ({err}). "
            "The file is incomplete: download it again."
        ) from err


def storage_dtype(state_dict: StateDict) -> torch.dtype:
    """The floating dtype holding most of the weights."""
    counts = Counter()
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0]


def target_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """fp8 storage is for Linear weights only; biases, norm scales, the conv and the sincos table stay bf16."""
    if dtype in FP8_DTYPES and not (tensor.ndim == 2 and key.endswith(".weight")):
        return torch.bfloat16
    return dtype


def cast_(state_dict: StateDict, dtype: torch.dtype, device) -> None:
    """Cast every tensor in place of the dict, one at a time (peak memory: the file plus one tensor)."""
    for key, tensor in state_dict.items():
        state_dict[key] = tensor.to(device=device, dtype=target_dtype(key, tensor, dtype))


def read_dit_state_dict(path: str) -> Tuple[str, StateDict, Optional[Dict]]:
    """(variant, state dict without wrapper prefix, config.json or None) of a DiT folder or file."""
    state_dict = strip_prefix(load_state_dict(path), KEY_PREFIXES)
    kind = identify_checkpoint(state_dict)
    if kind not in VARIANT_OF_KIND:
        raise CheckpointError(wrong_kind_message(path, kind))
    config = read_json(os.path.join(path, "config.json")) if os.path.isdir(path) else None
    return VARIANT_OF_KIND[kind], state_dict, config


def wrong_kind_message(path: str, kind: str) -> str:
    if kind == "vae":
        return f"'{path}' is {describe(kind)}, not a DiT: load it with the VAE loader (pyramid_flow.vae.load_vae)."
    if kind in ("clip", "t5"):
        return f"'{path}' is {describe(kind)}, not a DiT: it belongs in the text encoder folders of the model."
    return (
        f"'{path}' is {describe(kind)}: no Pyramid Flow DiT keys found (expected e.g. 'x_embedder.weight' for "
        "miniFLUX or 'pos_embed.proj.weight' for SD3). Use a diffusion_transformer_* folder of "
        "rain1011/pyramid-flow-* or a Kijai/pyramid-flow-comfy DiT file."
    )


def build(variant: str, config: Dict, state_dict: StateDict, path: str, dtype, device, operations) -> PyramidDiT:
    """Construct on ``meta`` and assign the (already cast) tensors; strict, so any mismatch is reported."""
    build_dtype = torch.bfloat16 if dtype in FP8_DTYPES else dtype
    model = MODEL_CLASSES[variant](**config, dtype=build_dtype, device="meta", operations=operations)
    if variant == "sd3" and "pos_embed.pos_embed" not in state_dict:
        state_dict["pos_embed.pos_embed"] = model.pos_embed.sincos_table()
    cast_(state_dict, dtype, device)
    return assign_weights(model, state_dict, path, f"{variant} DiT")


def load_dit(path: str, dtype: torch.dtype = torch.float32, device="cpu", operations=None) -> Tuple[PyramidDiT, DiTInfo]:
    """Load a Pyramid Flow DiT.

    path: an official component folder (config.json + diffusion_pytorch_model.safetensors / .bin / sharded
    index) or a single file with the official key names (optionally under ``model.diffusion_model.`` or
    ``diffusion_model.``), fp32, bf16 or fp8 on disk. Weights are cast to ``dtype``; with an fp8 ``dtype``
    Linear weights are stored in fp8 (use ``operations`` that cast at run time) and the rest in bf16.
    """
    check_dtype(dtype, operations)
    variant, state_dict, config = read_dit_state_dict(path)
    config = dict(config or infer_config(variant, state_dict, path), **LOADER_OVERRIDES[variant])
    info = DiTInfo(variant=variant, config=config, source_dtype=storage_dtype(state_dict))
    return build(variant, config, state_dict, path, dtype, device, operations), info
