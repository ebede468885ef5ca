"""Reading weight files: safetensors (single or sharded) and ``.bin`` through ``weights_only``, lazily.

:class:`WeightSource` gives the keys and shapes of a file without reading its data, and one tensor at a time,
so a loader can identify a checkpoint and read its config before any heavy work, and stream the tensors into a
model built on the ``meta`` device: peak memory is the loaded model plus one tensor of the file, never two copies.
"""

import argparse
import inspect
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open

StateDict = Dict[str, torch.Tensor]
Reader = Callable[[str], Mapping[str, torch.Tensor]]  # one weight file -> its tensors (may be memory-mapped)

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


# Shown by ComfyUI as the exception's type: a short, stable name instead of the install path of the module.
CheckpointError.__module__ = "pyramid_flow"

WEIGHT_EXTENSIONS = (".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt")  # what WeightSource reads
PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt")  # read as plain tensors only (weights_only=True)


def unsafe_pickle_error(path: str, err: Exception) -> CheckpointError:
    """The message for a pickled weight file that is not a plain tensor dict (it would run code to load)."""
    return CheckpointError(
        f"'{path}' could not be read as plain tensors ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "Only safe formats load: safetensors, or .bin/.pt files that hold nothing but tensors (weights_only). "
        "Download the .safetensors version of this file, or re-download the original."
    )


def _truncated(path: str, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"'{path}' is not a readable safetensors file ({err}). It is probably truncated by an interrupted "
        "download: delete it and download it again."
    )


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


EMA_WEIGHT_FILE = "pytorch_model_ema.bin"  # beside an accelerate checkpoint's weights when training kept an EMA


def ema_weight_file(path: str) -> str:
    """The EMA weights of a training checkpoint folder (``checkpoint-N/``), or of the folder of a weight file."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(folder, EMA_WEIGHT_FILE)
    if not os.path.isfile(file):
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise CheckpointError(
            f"EMA weights were asked for, but '{folder}' has no {EMA_WEIGHT_FILE} (found: {', '.join(present) or 'nothing'}). "
            "The training script writes it only when it ran with EMA: load without EMA to use the trained weights.")
    return file


def weight_files(path: str) -> List[str]:
    """The weight files of a file, a sharded ``.index.json`` or an official component folder."""
    if os.path.isdir(path):
        path = find_weight_file(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Weight file '{path}' does not exist.")
    if path.endswith(".index.json"):
        index = read_json(path)
        if "weight_map" not in index:
            raise CheckpointError(f"'{path}' has no weight_map: the index is damaged, download it again.")
        return [os.path.join(os.path.dirname(path), name) for name in sorted(set(index["weight_map"].values()))]
    if not path.endswith(WEIGHT_EXTENSIONS):
        raise CheckpointError(f"'{path}' is not a weight format that loads here: use a {', '.join(WEIGHT_EXTENSIONS)} "
                              "file or an official model folder.")
    return [path]


class _SafetensorsFile:
    """One safetensors file read through its header: keys and shapes for free, each tensor on request."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.handle = safe_open(path, framework="pt")
        except (SafetensorError, OSError) as err:
            raise _truncated(path, err) from err

    def keys(self) -> List[str]:
        return list(self.handle.keys())

    def shape(self, key: str) -> List[int]:
        return list(self.handle.get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self.handle.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise _truncated(self.path, err) from err


class _MappingFile:
    """A weight file already opened as a mapping (a memory-mapped .bin, or what a caller's reader returned)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = tensors

    def keys(self) -> List[str]:
        return list(self.tensors.keys())

    def shape(self, key: str) -> List[int]:
        return list(self.tensors[key].shape)

    def tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key]


TRAINING_STATE_KEY = "model"  # train_video_vae.py saves {"model": weights, "optimizer": ..., "args": ...}


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(t, torch.Tensor) for t in value.values())


def _open_bin(path: str) -> _MappingFile:
    try:
        # The training scripts store their argparse.Namespace beside the weights: plain data, allowed by name.
        with torch.serialization.safe_globals([argparse.Namespace]):
            tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a bad or unsafe pickle
        raise unsafe_pickle_error(path, err) from err
    if isinstance(tensors, dict) and _is_tensor_dict(tensors.get(TRAINING_STATE_KEY)):
        return _MappingFile(tensors[TRAINING_STATE_KEY])  # optimizer, scaler and args are not weights
    if not _is_tensor_dict(tensors):
        found = f"a dict with keys {sorted(map(str, tensors))[:8]}" if isinstance(tensors, dict) else (
            f"a {type(tensors).__name__}")
        raise CheckpointError(f"'{path}' holds {found}, not a dict of tensors (nor a training checkpoint with the "
                              f"weights under '{TRAINING_STATE_KEY}').")
    return _MappingFile(tensors)


# Module wrappers whose names FSDP and activation checkpointing insert into every key they wrap.
WRAPPER_FRAGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


@dataclass(frozen=True)
class KeyLayout:
    """How the keys of one component (the DiT, the VAE) may be wrapped in a file.

    ``prefixes``: a prefix the component's keys may carry, removed on reading (``model.diffusion_model.``,
    ``dit.``, ``vae.``, ...). ``others``: prefixes of other components stored beside it in the same file (the
    training scripts save the VAE with its loss and discriminator, the DiT beside the VAE and text encoders);
    their keys are skipped, but only when every key outside the prefix is one of them.
    """

    prefixes: Tuple[str, ...] = ()
    others: Tuple[str, ...] = ()

    def select(self, keys: Iterable[str], path: str) -> Dict[str, str]:
        """The component's keys as the model names them -> the keys in the file ``path``."""
        unwrapped = {unwrap(key): key for key in keys}
        for prefix in self.prefixes:
            mine = [key for key in unwrapped if key.startswith(prefix)]
            if not mine:
                continue
            stray = [key for key in unwrapped if not key.startswith((prefix,) + self.others)]
            if stray:
                raise CheckpointError(
                    f"'{path}' holds {len(mine)} keys under '{prefix}' beside {len(stray)} keys of something else "
                    f"(e.g. '{stray[0]}'). Expected that component alone"
                    + (f", or with only {', '.join(repr(o) for o in self.others)} keys beside it (the official "
                       "training scripts' layout)" if self.others else "") + ".")
            return {key[len(prefix):]: unwrapped[key] for key in mine}
        return unwrapped


def unwrap(key: str) -> str:
    """A key without the FSDP / activation-checkpointing wrapper fragments."""
    for fragment in WRAPPER_FRAGMENTS:
        key = key.replace(fragment, "")
    return key


class WeightSource:
    """The tensors of a weight file, a sharded index or an official component folder.

    ``reader`` (optional) opens one safetensors file as a mapping of tensors, e.g. ComfyUI's memory-mapped
    ``comfy.utils.load_torch_file``; by default safetensors are read through their header (tensors on request).
    ``.bin`` files are always memory-mapped with ``weights_only``. Keys are read through ``layout``: wrapper
    fragments and a component prefix removed, other components' keys skipped.
    """

    def __init__(self, path: str, reader: Optional[Reader] = None, layout: KeyLayout = KeyLayout()):
        self.path = path
        self._owner: Dict[str, object] = {}
        for file in weight_files(path):
            opened = self._open(file, reader)
            for key in opened.keys():
                self._owner[key] = opened
        self._file_key = layout.select(self._owner, path)

    @staticmethod
    def _open(file: str, reader: Optional[Reader]):
        if file.endswith(PICKLE_EXTENSIONS):
            return _open_bin(file)  # always weights_only, with the error that names an unsafe pickle
        if reader is None:
            return _SafetensorsFile(file)
        try:
            return _MappingFile(reader(file))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise _truncated(file, err) from err

    def keys(self) -> List[str]:
        """The component's keys as the model names them."""
        return list(self._file_key)

    def shapes(self) -> Dict[str, torch.Tensor]:
        """Every key with an empty ``meta`` tensor of its shape (for config inference; reads no data)."""
        return {key: torch.empty(self._owner[raw].shape(raw), device="meta") for key, raw in self._file_key.items()}

    def tensor(self, key: str) -> torch.Tensor:
        raw = self._file_key[key]
        return self._owner[raw].tensor(raw)

    def state_dict(self) -> StateDict:
        """Every tensor at once (for tools and tests; loaders stream with :meth:`tensor`)."""
        return {key: self.tensor(key) for key in self.keys()}


def load_state_dict(path: str) -> StateDict:
    """Every tensor of a weight file, a sharded index, or an official component folder."""
    return WeightSource(path).state_dict()


def stream_tensors(source: WeightSource, cast: Callable[[str, torch.Tensor], torch.Tensor],
                   computed: Optional[StateDict] = None) -> StateDict:
    """Read the tensors of ``source`` one by one through ``cast(key, tensor)`` (which moves and converts each
    before the next is read), plus the ``computed`` tensors the file may lack: the state dict to assign."""
    state_dict = {}
    for key in source.keys():
        state_dict[key] = cast(key, source.tensor(key))
    for key, tensor in (computed or {}).items():
        state_dict.setdefault(key, cast(key, tensor))
    return state_dict


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


def report_unknown_config(config: Mapping, model_class: type, path: str) -> None:
    """Warn, naming them, about config.json keys that ``model_class`` neither takes nor knows to be without effect at
    inference (its ``inert_config_keys``): a setting that would silently change nothing."""
    taken = set(inspect.signature(model_class.__init__).parameters)
    unknown = sorted(set(config) - taken - set(getattr(model_class, "inert_config_keys", ())))
    if unknown:
        warnings.warn(f"'{path}': config.json keys {unknown} are unknown to {model_class.__name__} and have no effect. "
                      "Check that the config belongs to a Pyramid Flow model of this version.", stacklevel=3)


def read_json(path: str) -> Optional[dict]:
    """A config.json as a dict, or None when the file is absent."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"'{path}' is not valid JSON ({err}): the file is damaged. Download it again from the "
                              "model's Hugging Face repository.") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' holds a JSON {type(data).__name__}, not the expected object of settings: "
                              "download it again.")
    return data
