"""The golden data of the official code (``manifest.json``, case files, tiny checkpoints in the official layout):
where it is and how to read it, for the parity tests (``tests/golden.py``) and the benchmarks.

The set is ``PYRAMID_FLOW_GOLDEN`` when set, else ``../shared/golden`` beside the clone, else the trimmed copy in
``tests/parity/`` (``scripts/vendor_golden.py``). Everything a reader needs comes from the manifest: case files,
call arguments, shapes and the checkpoint folder of each variant.
"""

import json
import os
from functools import lru_cache
from typing import Dict

import torch
from safetensors.torch import load_file

from ..noise import ReplayNoise

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_GOLDEN = os.path.join(REPO_ROOT, "..", "shared", "golden")
VENDORED_GOLDEN = os.path.join(REPO_ROOT, "tests", "parity")
NOISE_KINDS = {"prepare_latents": "latents", "posterior_sample": "posterior", "block_noise": "block_noise"}


def golden_root() -> str:
    chosen = os.environ.get("PYRAMID_FLOW_GOLDEN")
    if not chosen:
        chosen = SHARED_GOLDEN if os.path.isfile(os.path.join(SHARED_GOLDEN, "manifest.json")) else VENDORED_GOLDEN
    return os.path.abspath(chosen)


def manifest_path() -> str:
    return os.path.join(golden_root(), "manifest.json")


@lru_cache(maxsize=None)
def read_manifest() -> dict:
    """The manifest of the chosen set; FileNotFoundError when the set is missing."""
    with open(manifest_path(), encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def tensors(file_name: str) -> Dict[str, torch.Tensor]:
    return load_file(os.path.join(golden_root(), "cases", file_name))


def case_file(file_name: str) -> str:
    return os.path.join(golden_root(), "cases", file_name)


def checkpoint_root(variant: str) -> str:
    return os.path.join(golden_root(), "checkpoints", variant)


def replay_noise(case: dict, recorded: dict) -> ReplayNoise:
    """The case's official noise draws, in the order the manifest lists them."""
    return ReplayNoise([(NOISE_KINDS[entry["kind"]], recorded[entry["key"]]) for entry in case["noise"]])
