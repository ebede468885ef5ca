"""Resumable runs: the finished latent frames of a run, kept on disk as each is made, so a run stopped by any fault
(out of memory, Ctrl-C, a killed process or server, a full disk while writing the video) continues where it
stopped and gives the video an uninterrupted run gives.

This is exact because the default noise is keyed by (seed, latent frame, stage): a frame's noise does not depend
on the frames drawn before it, so continuing from k finished frames draws what the uninterrupted run draws for
frame k on. (The official noise is one sequential stream; runs with it keep no state.)

A state is a folder: ``identity.json`` (what the frames depend on: model, seed, sizes, steps, guidance, text and
start digests, and the format version) and one safetensors file per finished frame, each written under a
temporary name and renamed, and each carrying the identity's digest. A state made for anything else is refused
with the fields that differ; a damaged or edited frame file is refused, never loaded into a run. What may change
between a stopped run and its continuation: the history window, the device and the dtype (a retry with a window,
or on a bigger card, continues; the frames already made stay as they were made).
"""

import hashlib
import json
import os
import shutil
from typing import List, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .video_io import atomic_path

FORMAT_VERSION = "1"
IDENTITY_FILE = "identity.json"
FRAME_KEY = "frame"
FRAME_PREFIX = "frame_"  # frame_<unit>.safetensors


def kept_frames(folder: str) -> int:
    """How many finished frames a state folder holds (0 when there is none)."""
    if not os.path.isdir(folder):
        return 0
    return len([name for name in os.listdir(folder) if name.startswith(FRAME_PREFIX)])


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


class StateMismatch(ValueError):
    """A state that belongs to another run, or that was damaged: never continued."""


def tensor_digest(*tensors: Optional[torch.Tensor]) -> str:
    """A short digest of tensors' shapes, dtypes and values (float32 bytes on the CPU)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(values.shape)).encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:20]


def model_fingerprint(module: torch.nn.Module, values_per_tensor: int = 64) -> str:
    """A cheap fingerprint of a model's weights: every tensor's name, shape and dtype and its first values (a few
    KB read from a multi-GB model), enough to tell two checkpoints or a fine-tune from its base apart."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.numel() and tensor.device.type != "meta":
            digest.update(tensor.detach().flatten()[:values_per_tensor].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()[:20]


class ResumeState:
    """The finished frames of one run in ``folder``, for a run of ``identity`` (str -> str)."""

    def __init__(self, folder: str, identity: Mapping[str, str]):
        self.folder = folder
        self.identity = {"format": FORMAT_VERSION, **{k: str(v) for k, v in identity.items()}}
        self.digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:20]

    @classmethod
    def keyed(cls, root: str, identity: Mapping[str, str]) -> "ResumeState":
        """The state of a run of ``identity`` in its own folder under ``root``, named by the identity's digest (the
        same inputs find it again; any other input makes another folder)."""
        state = cls(root, identity)
        state.folder = os.path.join(root, state.digest)
        return state

    def _frame_path(self, unit: int) -> str:
        return os.path.join(self.folder, f"{FRAME_PREFIX}{unit:05d}.safetensors")

    def check(self) -> bool:
        """Whether a state of this run exists; StateMismatch, naming the fields, for a state of another run."""
        path = os.path.join(self.folder, IDENTITY_FILE)
        if not os.path.isfile(path):
            return False
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, ValueError) as err:
            raise StateMismatch(f"The resume state '{path}' is damaged ({err}). Delete '{self.folder}' to start "
                                "over.") from err
        if not isinstance(stored, dict):
            raise StateMismatch(f"The resume state '{path}' is damaged. Delete '{self.folder}' to start over.")
        differ = sorted(set(stored) ^ set(self.identity) | {k for k in stored if stored[k] != self.identity.get(k)})
        if differ:
            changes = "; ".join(f"{k}: {stored.get(k, 'absent')} -> {self.identity.get(k, 'absent')}" for k in differ)
            raise StateMismatch(
                f"The resume state in '{self.folder}' belongs to another run ({changes}). Run the same request again "
                "to continue it, or delete that folder (CLI: --restart) to start this one from scratch.")
        return True

    def load(self, first_unit: int = 0) -> Optional[torch.Tensor]:
        """The finished frames from ``first_unit`` on, contiguous, [B, 16, n, h, w]; None when there are none."""
        if not self.check():
            return None
        frames: List[torch.Tensor] = []
        while os.path.isfile(self._frame_path(first_unit + len(frames))):
            frames.append(self._read_frame(first_unit + len(frames)))
        return torch.cat(frames, dim=2) if frames else None

    def _read_frame(self, unit: int) -> torch.Tensor:
        path = self._frame_path(unit)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                frame = f.get_tensor(FRAME_KEY)
        except (SafetensorError, OSError, KeyError) as err:
            raise StateMismatch(f"The resume state's frame '{path}' is damaged ({err}); it is not used. Delete "
                                f"'{self.folder}' to start over.") from err
        if metadata.get("identity") != self.digest or metadata.get("unit") != str(unit) or frame.dim() != 5:
            raise StateMismatch(f"The resume state's frame '{path}' does not belong to this run (edited or copied "
                                f"from another state); it is not used. Delete '{self.folder}' to start over.")
        return frame

    def save_frame(self, unit: int, frame: torch.Tensor) -> None:
        """Keep a finished frame [B, 16, 1, h, w] (normalised); the identity is written with the first frame."""
        os.makedirs(self.folder, exist_ok=True)
        identity = os.path.join(self.folder, IDENTITY_FILE)
        if not os.path.isfile(identity):
            with atomic_path(identity) as partial, open(partial, "w", encoding="utf-8") as f:
                json.dump(self.identity, f, indent=1, sort_keys=True)
        with atomic_path(self._frame_path(unit)) as partial:
            save_file({FRAME_KEY: frame.detach().to("cpu", torch.float32).contiguous()}, partial,
                      metadata={"identity": self.digest, "unit": str(unit)})

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def prune(root: str, limit_bytes: int, keep: str) -> None:
    """Remove the oldest states under ``root`` (by last change) until they take at most ``limit_bytes``; ``keep``
    (the running state's folder) stays."""
    if not os.path.isdir(root):
        return
    states = [os.path.join(root, name) for name in os.listdir(root) if os.path.join(root, name) != keep]
    states = sorted((path for path in states if os.path.isdir(path)), key=os.path.getmtime)
    sizes = {path: folder_bytes(path) for path in states}
    total = sum(sizes.values())
    for path in states:
        if total <= limit_bytes:
            break
        shutil.rmtree(path, ignore_errors=True)
        total -= sizes[path]
