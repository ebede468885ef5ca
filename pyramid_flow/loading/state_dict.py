"""Reading weight files from disk: safetensors (single or sharded) and ``.bin`` through ``weights_only``."""

import json
import os
from typing import Dict, Iterable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

StateDict = Dict[str, torch.Tensor]

WEIGHT_FILE_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


class CheckpointError(ValueError):
    """A weight file or folder that cannot be used; the message names the problem and the fix."""


def find_weight_file(folder: str) -> str:
    """The weight file inside an official Hugging Face component folder."""
    for name in WEIGHT_FILE_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise CheckpointError(
        f"No weights found in '{folder}': expected one of {', '.join(WEIGHT_FILE_NAMES)}. "
        "Download the complete folder from the Hugging Face repository."
    )


def _load_safetensors(path: str, device: str) -> StateDict:
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({err}). It is probably truncated by an interrupted "
            "download: delete it and download it again."
        ) from err


def _load_bin(path: str) -> StateDict:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad pickle
        raise CheckpointError(
            f"'{path}' could not be read as a PyTorch weights file ({err}). Only plain tensor dicts are "
            "loaded (weights_only=True); re-download the file or use the .safetensors version."
        ) from err
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"'{path}' holds a {type(state_dict).__name__}, not a dict of tensors.")
    return state_dict


def _load_index(path: str, device: str) -> StateDict:
    with open(path, encoding="utf-8") as f:
        shard_names = sorted(set(json.load(f)["weight_map"].values()))
    folder = os.path.dirname(path)
    state_dict: StateDict = {}
    for name in shard_names:
        state_dict.update(_load_safetensors(os.path.join(folder, name), device))
    return state_dict


def load_state_dict(path: str, device: str = "cpu") -> StateDict:
    """Load every tensor of a weight file, a sharded index, or an official component folder."""
    if os.path.isdir(path):
        path = find_weight_file(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Weight file '{path}' does not exist.")
    if path.endswith(".index.json"):
        return _load_index(path, device)
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        return _load_bin(path)
    return _load_safetensors(path, device)


def assign_weights(model: torch.nn.Module, state_dict: StateDict, path: str, what: str) -> torch.nn.Module:
    """Load ``state_dict`` into a model built on ``meta`` (tensors assigned, not copied); strict, so a mismatch
    between the weights and the config is reported. Returns the model in eval mode without gradients."""
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"The weights in '{path}' do not fit the {what} described by its config ({err}). Check that config.json "
            "belongs to these weights, or remove it to infer the config from the weights."
        ) from err
    return model.eval().requires_grad_(False)


def strip_prefix(state_dict: StateDict, prefixes: Iterable[str]) -> StateDict:
    """Drop a common key prefix (``model.``, ``diffusion_model.``, ``vae.``) if every key carries it."""
    for prefix in prefixes:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def read_json(path: str) -> Optional[dict]:
    """A config.json as a dict, or None when the file is absent."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
