"""Access to the golden data produced by the official code: ``PYRAMID_FLOW_GOLDEN`` when set, else
``../shared/golden`` when it is beside the clone, else the copy in ``tests/parity/`` (scripts/vendor_golden.py), so
parity runs from any clone.

Everything a parity test needs comes from ``manifest.json``: case files, call arguments, shapes and the
checkpoint folder of each variant. Nothing about the public set's particular sizes is assumed.
"""

import json
import os
from functools import lru_cache
from typing import Dict, List

import pytest
import torch
from safetensors.torch import load_file

from pyramid_flow.noise import ReplayNoise

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE_KINDS = {"prepare_latents": "latents", "posterior_sample": "posterior", "block_noise": "block_noise"}
SHARED_GOLDEN = os.path.join(REPO_ROOT, "..", "shared", "golden")
VENDORED_GOLDEN = os.path.join(REPO_ROOT, "tests", "parity")


def golden_root() -> str:
    chosen = os.environ.get("PYRAMID_FLOW_GOLDEN")
    if not chosen:
        chosen = SHARED_GOLDEN if os.path.isfile(os.path.join(SHARED_GOLDEN, "manifest.json")) else VENDORED_GOLDEN
    return os.path.abspath(chosen)


@lru_cache(maxsize=None)
def manifest() -> dict:
    path = os.path.join(golden_root(), "manifest.json")
    if not os.path.isfile(path):  # a missing set is a failure, never a skip: the parity tests would hide it
        pytest.fail(f"golden data not found at {path}: PYRAMID_FLOW_GOLDEN names a folder without manifest.json, "
                    "or tests/parity is missing from this clone", pytrace=False)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cases(kind: str) -> List[dict]:
    """Manifest cases whose name is ``kind`` or ends with ``/kind`` (e.g. 'vae' -> 'sd3/vae', 'miniflux/vae')."""
    return [c for c in manifest()["cases"] if c["name"] == kind or c["name"].endswith("/" + kind)]


def case_params(kind: str):
    """``pytest.mark.parametrize`` values for every case of a kind, named by the case, read lazily."""
    path = os.path.join(golden_root(), "manifest.json")
    if not os.path.isfile(path):
        return [pytest.param(None, id="golden-missing")]
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    found = [c for c in data["cases"] if c["name"] == kind or c["name"].endswith("/" + kind)]
    return [pytest.param(c, id=c["name"]) for c in found] or [pytest.param(None, id=f"no-{kind}-case")]


def require_case(case) -> dict:
    if case is None:
        manifest()  # skips or fails with the right message when the folder is missing
        pytest.fail("the manifest lists no case of this kind", pytrace=False)
    return case


@lru_cache(maxsize=None)
def tensors(file_name: str) -> Dict[str, torch.Tensor]:
    return load_file(os.path.join(golden_root(), "cases", file_name))


def checkpoint_root(variant: str) -> str:
    return os.path.join(golden_root(), "checkpoints", variant)


def variant_info(variant: str) -> dict:
    return manifest()["variants"][variant]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str = "") -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.detach().double().cpu() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert diff <= atol, f"{name}: max |diff| {diff:.3g} > {atol:g}"


def replay_noise(case: dict, recorded: dict) -> ReplayNoise:
    """The case's official noise draws, in the order the manifest lists them."""
    return ReplayNoise([(NOISE_KINDS[entry["kind"]], recorded[entry["key"]]) for entry in case["noise"]])
