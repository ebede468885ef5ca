"""Loading a Pyramid Flow DiT from an official component folder or a single (kijai-style) file.

The variant comes from the state-dict keys; the config from ``config.json`` when the folder has one, else
from tensor shapes. The model is built on the ``meta`` device and the file's tensors are assigned to it, so
the 8 GB weights are never materialised twice.
"""

import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..dtypes import check_model_dtype, compute_dtype, is_fp8
from ..loading.detect import describe, dit_variant_name, identify_checkpoint
from ..loading.state_dict import (CheckpointError, KeyLayout, Reader, StateDict, WeightSource, assign_weights,
                                  ema_weight_file, read_json, report_unknown_config, stream_tensors)
from ..attention import SDPA, AttentionBackend
from .base import DIT_CLASSES, PyramidDiT

# ComfyUI-style single files; the official training scripts' flat dict beside the VAE and the text encoders.
KEY_LAYOUT = KeyLayout(prefixes=("model.diffusion_model.", "diffusion_model.", "dit."),
                       others=("vae.", "text_encoder"))


@dataclass(frozen=True)
class DiTInfo:
    variant: str  # "sd3" or "miniflux"
    config: Dict  # the constructor kwargs used (official config.json keys, loader overrides applied)
    source_dtype: torch.dtype  # the dtype of most weights on disk


def check_dtype(dtype: torch.dtype, operations) -> None:
    check_model_dtype(dtype, "the Pyramid Flow DiT", fp8_allowed=True)
    if is_fp8(dtype) and operations is None:
        raise ValueError(
            f"dtype {dtype} stores weights in fp8, which plain torch.nn layers cannot multiply: pass operations "
            "that cast weights at run time (e.g. comfy.ops.manual_cast), or load in torch.bfloat16."
        )


def infer_config(variant: str, state_dict: StateDict, path: str) -> Dict:
    """The official config.json values recoverable from tensor shapes."""
    try:
        return DIT_CLASSES[variant].config_from_state_dict(state_dict)
    except (KeyError, StopIteration) as err:
        raise CheckpointError(
            f"'{path}' looks like a Pyramid Flow {variant} DiT but lacks tensors needed to read its size ({err}). "
            "The file is incomplete: download it again."
        ) from err


def target_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """fp8 storage is for Linear weights only; biases, norm scales, the conv and the sincos table stay bf16."""
    if is_fp8(dtype) and not (tensor.ndim == 2 and key.endswith(".weight")):
        return torch.bfloat16
    return dtype


def identify_dit(keys, path: str) -> str:
    """The variant of a DiT's keys; a CheckpointError naming what the file is instead."""
    kind = identify_checkpoint(keys)
    variant = dit_variant_name(kind)
    if variant not in DIT_CLASSES:
        raise CheckpointError(wrong_kind_message(path, kind))
    return variant


def wrong_kind_message(path: str, kind: str) -> str:
    if kind == "vae":
        return (f"'{path}' is {describe(kind)}, not a DiT: load it as the VAE ('Pyramid Flow VAE Loader' in ComfyUI, "
                "the causal_video_vae folder of the model) and pick a diffusion_transformer_* folder or DiT file here.")
    if kind in ("clip", "t5"):
        return (f"'{path}' is {describe(kind)}, not a DiT: text encoders load through DualCLIPLoader / "
                "TripleCLIPLoader or 'Pyramid Flow Text Encoder Loader'; pick a diffusion_transformer_* folder here.")
    return (
        f"'{path}' is {describe(kind)}: no Pyramid Flow DiT keys found (expected e.g. 'x_embedder.weight' for "
        "miniFLUX or 'pos_embed.proj.weight' for SD3). Use a diffusion_transformer_* folder of "
        "rain1011/pyramid-flow-* or a Kijai/pyramid-flow-comfy DiT file."
    )


def dit_skeleton(variant: str, config: Mapping, dtype: torch.dtype = torch.float32, operations=None) -> PyramidDiT:
    """The DiT of ``variant`` built from ``config`` (official config.json keys) on the meta device: its modules
    and shapes without any weight memory."""
    return DIT_CLASSES[variant](**config, dtype=dtype, device="meta", operations=operations)


def load_dit(path: str, dtype: torch.dtype = torch.float32, device="cpu", operations=None,
             reader: Optional[Reader] = None, config: Optional[Mapping] = None, ema: bool = False,
             attention_backend: AttentionBackend = SDPA) -> Tuple[PyramidDiT, DiTInfo]:
    """Load a Pyramid Flow DiT.

    path: an official component folder (config.json + diffusion_pytorch_model.safetensors / .bin / sharded
    index) or a single file with the official key names (optionally under ``model.diffusion_model.`` or
    ``diffusion_model.``), fp32, bf16 or fp8 on disk. Weights are cast to ``dtype``; with an fp8 ``dtype``
    Linear weights are stored in fp8 (use ``operations`` that cast at run time) and the rest in bf16.

    The variant and config are read before any tensor (keys, shapes and config.json only); the model is built
    on ``meta`` and the file's tensors are streamed into it one by one, so peak memory is the loaded model plus
    one tensor. ``reader`` opens a weight file as a mapping of tensors (e.g. ComfyUI's memory-mapped loader).

    Checkpoints of the official training scripts load too: an accelerate ``checkpoint-N/`` folder (its
    ``model.safetensors`` or ``pytorch_model.bin``, FSDP wrapper names removed; ``ema=True`` reads
    ``pytorch_model_ema.bin`` beside it) and the flat dict whose DiT keys start with ``dit.`` (the VAE and text
    encoder keys beside them are skipped). ``config`` (config.json keys) describes the architecture when the
    path has no config.json of its own, e.g. the model folder's for a fine-tune; else it is read from the shapes.
    ``attention_backend``: the model's attention kernel (see :mod:`pyramid_flow.attention`).
    """
    check_dtype(dtype, operations)
    if ema:
        path = ema_weight_file(path)
    source = WeightSource(path, reader, KEY_LAYOUT)
    variant = identify_dit(source.keys(), path)
    dit_class = DIT_CLASSES[variant]
    own = read_json(os.path.join(path, "config.json")) if os.path.isdir(path) else None
    config = dict(own or config or infer_config(variant, source.shapes(), path), **dit_class.loader_overrides)
    report_unknown_config(config, dit_class, path)
    model = dit_skeleton(variant, config, compute_dtype(dtype), operations)
    model.attention_backend = attention_backend
    stored = Counter()

    def cast(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            stored[tensor.dtype] += tensor.numel()
        return tensor.to(device=device, dtype=target_dtype(key, tensor, dtype))

    state_dict = stream_tensors(source, cast, model.computed_tensors(source.keys()))
    info = DiTInfo(variant=variant, config=config, source_dtype=stored.most_common(1)[0][0])
    return assign_weights(model, state_dict, path, f"{variant} DiT"), info
