"""One DiT forward against the official model (float32, atol 1e-4), for every ``dit_forward`` case.

``gen``: the inputs captured inside generate() (one entry, CFG batch). ``multi``: the training-style call
with several entries, where entry i used rows i::S of the text inputs (S = number of entries); each entry is
replayed as its own forward.
"""

import os
import re

import pytest
import torch

from golden import assert_close, case_params, checkpoint_root, require_case, tensors, variant_info
from pyramid_flow.dit import load_dit

ATOL = 1e-4


def dit_folder(variant: str) -> str:
    return os.path.join(checkpoint_root(variant), variant_info(variant)["dit_folder"])


def entry_clips(recorded, group: str):
    """{entry index: [clip tensors in order]} from keys ``<group>/sample/<entry>/<clip>``."""
    entries = {}
    for key in recorded:
        match = re.fullmatch(rf"{group}/sample/(\d+)/(\d+)", key)
        if match:
            entries.setdefault(int(match[1]), {})[int(match[2])] = recorded[key]
    return {i: [clips[j] for j in sorted(clips)] for i, clips in sorted(entries.items())}


def replay(model, recorded, group: str):
    """Yield (name, prediction, expected) for every entry of a recorded call."""
    entries = entry_clips(recorded, group)
    assert entries, f"no {group}/sample/* tensors in the case file"
    for i, clips in entries.items():
        rows = slice(i, None, len(entries))
        with torch.no_grad():
            out = model(
                clips,
                recorded[f"{group}/encoder_hidden_states"][rows],
                recorded[f"{group}/encoder_attention_mask"][rows],
                recorded[f"{group}/pooled_projections"][rows],
                recorded[f"{group}/timestep_ratio"][rows],
            )
        yield f"{group}/output/{i}", out, recorded[f"{group}/output/{i}"]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = load_dit(dit_folder(variant))[0]
        return cache[variant]

    return get


@pytest.mark.parametrize("group", ["gen", "multi"])
@pytest.mark.parametrize("case", case_params("dit_forward"))
def test_dit_forward_matches_official(case, group, models):
    case = require_case(case)
    recorded = tensors(case["file"])
    model = models(case["variant"])
    for name, out, expected in replay(model, recorded, group):
        assert_close(out, expected, ATOL, f"{case['name']} {name}")


@pytest.mark.parametrize("case", case_params("dit_forward"))
def test_mask_free_attention_backends_match_official(case, models):
    """With an attention backend that takes no mask (sage, flash, xformers through ComfyUI) the DiT leaves padded
    text keys out per batch row: the same outputs."""
    from pyramid_flow.attention import SDPA, AttentionBackend, sdpa_attention

    case = require_case(case)
    recorded = tensors(case["file"])
    model = models(case["variant"])
    model.attention_backend = AttentionBackend(lambda q, k, v, mask=None: sdpa_attention(q, k, v), supports_mask=False)
    try:
        for name, out, expected in replay(model, recorded, "gen"):
            assert_close(out, expected, ATOL, f"{case['name']} {name} (mask-free)")
    finally:
        model.attention_backend = SDPA
