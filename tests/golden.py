"""The golden data produced by the official code, for pytest: the set chosen by
:mod:`pyramid_flow.testing.golden` (``PYRAMID_FLOW_GOLDEN``, else ``../shared/golden``, else ``tests/parity/``), a
missing set failing every parity test (never a skip), and cases as pytest parameters.

Everything a parity test needs comes from ``manifest.json``: case files, call arguments, shapes and the
checkpoint folder of each variant. Nothing about the public set's particular sizes is assumed.
"""

import os
from typing import List

import pytest
import torch

from pyramid_flow.testing.golden import (SHARED_GOLDEN, VENDORED_GOLDEN, checkpoint_root, golden_root,  # noqa: F401
                                         manifest_path, read_manifest, replay_noise, tensors)


def manifest() -> dict:
    if not os.path.isfile(manifest_path()):  # a missing set is a failure, never a skip: the parity tests would hide it
        pytest.fail(f"golden data not found at {manifest_path()}: PYRAMID_FLOW_GOLDEN names a folder without "
                    "manifest.json, or tests/parity is missing from this clone", pytrace=False)
    return read_manifest()


def cases(kind: str) -> List[dict]:
    """Manifest cases whose name is ``kind`` or ends with ``/kind`` (e.g. 'vae' -> 'sd3/vae', 'miniflux/vae')."""
    return [c for c in manifest()["cases"] if c["name"] == kind or c["name"].endswith("/" + kind)]


def case_params(kind: str):
    """``pytest.mark.parametrize`` values for every case of a kind, named by the case (a missing set gives one
    parameter that fails with the reason)."""
    if not os.path.isfile(manifest_path()):
        return [pytest.param(None, id="golden-missing")]
    found = [c for c in read_manifest()["cases"] if c["name"] == kind or c["name"].endswith("/" + kind)]
    return [pytest.param(c, id=c["name"]) for c in found] or [pytest.param(None, id=f"no-{kind}-case")]


def require_case(case) -> dict:
    if case is None:
        manifest()  # fails with the right message when the set is missing
        pytest.fail("the manifest lists no case of this kind", pytrace=False)
    return case


def variant_info(variant: str) -> dict:
    return manifest()["variants"][variant]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str = "") -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.detach().double().cpu() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert diff <= atol, f"{name}: max |diff| {diff:.3g} > {atol:g}"


