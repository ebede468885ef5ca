"""Loading the causal video VAE from an official ``causal_video_vae/`` folder or a single file (kijai's
``pyramid_flow_vae_{bf16,fp32}.safetensors``: the official key names, possibly under ``vae.``).

The model is built on the ``meta`` device and the file's tensors are assigned to it, so the weights are never
materialised twice.
"""

import os
from typing import Dict, List, Mapping, Optional

import torch

from ..dtypes import check_model_dtype
from ..loading.detect import describe, dit_variant_name, identify_checkpoint
from ..loading.state_dict import (CheckpointError, KeyLayout, Reader, StateDict, WeightSource, assign_weights, read_json,
                                  report_unknown_config, stream_tensors)
from .model import CausalVideoVAE

# Single files under a wrapper; train_video_vae.py's model, which holds the VAE beside its loss (LPIPS, discriminator).
KEY_LAYOUT = KeyLayout(prefixes=("vae.", "first_stage_model."), others=("loss.", "discriminator."))
OFFICIAL_NORM_GROUPS = 32  # norm_num_groups of the official causal_video_vae/config.json; weights do not tell it


def _indices(state_dict: StateDict, prefix: str) -> List[int]:
    """The sorted N of every ``prefix<N>.`` key."""
    found = {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    return sorted(int(n) for n in found if n.isdigit())


def infer_config(state_dict: StateDict, path: str) -> Dict:
    """The official causal_video_vae/config.json, with every size that the tensor shapes reveal."""
    sd = state_dict
    try:
        down, up = _indices(sd, "encoder.down_blocks."), _indices(sd, "decoder.up_blocks.")
        enc, dec = [f"encoder.down_blocks.{i}." for i in down], [f"decoder.up_blocks.{i}." for i in up]
        config = {
            "encoder_in_channels": sd["encoder.conv_in.conv.weight"].shape[1],
            "encoder_out_channels": sd["encoder.conv_out.conv.weight"].shape[0] // 2,
            "encoder_block_out_channels": [sd[p + "resnets.0.conv1.conv.weight"].shape[0] for p in enc],
            "encoder_layers_per_block": [len(_indices(sd, p + "resnets.")) for p in enc],
            "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * len(enc),
            "encoder_spatial_down_sample": [p + "downsamplers.0.conv.conv.weight" in sd for p in enc],
            "encoder_temporal_down_sample": [p + "temporal_downsamplers.0.conv.conv.weight" in sd for p in enc],
            "decoder_in_channels": sd["decoder.conv_in.conv.weight"].shape[1],
            "decoder_out_channels": sd["decoder.conv_out.conv.weight"].shape[0],
            "decoder_block_out_channels": [sd[p + "resnets.0.conv1.conv.weight"].shape[0] for p in reversed(dec)],
            "decoder_layers_per_block": [len(_indices(sd, p + "resnets.")) for p in dec],
            "decoder_up_block_types": ["UpDecoderBlockCausal3D"] * len(dec),
            "decoder_spatial_up_sample": [p + "upsamplers.0.conv.conv.weight" in sd for p in dec],
            "decoder_temporal_up_sample": [p + "temporal_upsamplers.0.conv.conv.weight" in sd for p in dec],
        }
    except KeyError as err:
        raise CheckpointError(
            f"'{path}' looks like a Pyramid Flow VAE but lacks tensors needed to read its size ({err}). "
            "The file is incomplete: download it again."
        ) from err
    channels = config["encoder_block_out_channels"] + config["decoder_block_out_channels"]
    if any(c % OFFICIAL_NORM_GROUPS for c in channels):
        raise CheckpointError(
            f"'{path}' has block channels {channels}, which the official {OFFICIAL_NORM_GROUPS} GroupNorm groups do "
            "not divide, and a single file does not record its group count: load the causal_video_vae folder "
            "with its config.json instead."
        )
    config["encoder_norm_num_groups"] = config["decoder_norm_num_groups"] = OFFICIAL_NORM_GROUPS
    return config


def check_vae_keys(keys, path: str) -> None:
    """A CheckpointError naming what the file is when it is not the VAE."""
    kind = identify_checkpoint(keys)
    if dit_variant_name(kind):
        raise CheckpointError(
            f"'{path}' is {describe(kind)}, not a VAE: load it as the model ('Pyramid Flow Model Loader' in ComfyUI) "
            "and pick the causal_video_vae folder or pyramid_flow_vae_*.safetensors here."
        )
    if kind != "vae":
        raise CheckpointError(
            f"'{path}' is {describe(kind)}: no Pyramid Flow VAE keys found (expected 'encoder.conv_in.conv.weight' "
            "or 'decoder.conv_in.conv.weight'). Use the causal_video_vae folder of rain1011/pyramid-flow-* or "
            "Kijai/pyramid-flow-comfy's pyramid_flow_vae_*.safetensors."
        )


def load_vae(path: str, dtype: torch.dtype = torch.float32, device="cpu", operations=None,
             reader: Optional[Reader] = None, config: Optional[Mapping] = None) -> CausalVideoVAE:
    """Load the causal video VAE in eval mode, weights cast to ``dtype`` (bf16 or fp32) on ``device``.

    path: an official ``causal_video_vae`` folder (config.json + safetensors or .bin) or a single safetensors
    file with the official key names (optionally under ``vae.``), or a checkpoint of ``train_video_vae.py``
    (``{"model": {"vae.…": …}}``, its loss and discriminator keys skipped). Without a config.json of its own,
    ``config`` (e.g. the model folder's) or else the official config with the sizes read from the tensor shapes. GroupNorm weights are rounded to ``dtype`` and kept in
    float32, where the norms compute (the official bf16 autocast does the same). Keys and config are checked
    before any tensor is read; tensors are streamed into the model one by one (``reader``: see
    :class:`~pyramid_flow.loading.state_dict.WeightSource`).
    """
    check_model_dtype(dtype, "the Pyramid Flow VAE")
    source = WeightSource(path, reader, KEY_LAYOUT)
    check_vae_keys(source.keys(), path)
    own = read_json(os.path.join(path, "config.json")) if os.path.isdir(path) else None
    config = own or config or infer_config(source.shapes(), path)
    report_unknown_config(config, CausalVideoVAE, path)
    model = CausalVideoVAE(**config, dtype=dtype, device="meta", operations=operations)
    storage = {key: tensor.dtype for key, tensor in model.state_dict().items()}

    def cast(key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=device, dtype=dtype).to(storage.get(key, dtype))

    return assign_weights(model, stream_tensors(source, cast), path, "VAE")
