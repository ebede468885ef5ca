"""The golden copy in tests/parity/ (what a clone without ../shared tests parity against) is complete, and equal to
the public set it was trimmed from wherever that set is beside the clone."""

import json
import os

import torch
from safetensors.torch import load_file

from golden import SHARED_GOLDEN, VENDORED_GOLDEN


def vendored_manifest() -> dict:
    with open(os.path.join(VENDORED_GOLDEN, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def test_the_vendored_set_has_every_file_its_manifest_names():
    data = vendored_manifest()
    names = {case[key] for case in data["cases"] for key in ("file", "image_png") if key in case}
    assert names and all(os.path.isfile(os.path.join(VENDORED_GOLDEN, "cases", n)) for n in names), names
    for variant, info in data["variants"].items():
        folder = os.path.join(VENDORED_GOLDEN, "checkpoints", variant, info["dit_folder"])
        assert os.path.isfile(os.path.join(folder, "config.json")), folder


def test_the_vendored_cases_equal_the_public_set_less_the_trimmed_keys():
    with open(os.path.join(VENDORED_GOLDEN, "trimmed.json"), encoding="utf-8") as f:
        trimmed = set(json.load(f)["trimmed_keys"])
    source = os.path.join(SHARED_GOLDEN, "cases")
    for name in sorted(os.listdir(os.path.join(VENDORED_GOLDEN, "cases"))):
        if not name.endswith(".safetensors"):
            continue
        ours = load_file(os.path.join(VENDORED_GOLDEN, "cases", name))
        assert ours and not trimmed & set(ours), name
        if os.path.isdir(source):  # the public set beside the clone (CI's layout): the copy is still faithful
            theirs = load_file(os.path.join(source, name))
            assert set(ours) == set(theirs) - trimmed, name
            assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
