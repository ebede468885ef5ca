"""Text encoders against the official ``pipe.text_encoder`` outputs: token ids exact, embeddings to 1e-4."""

from functools import lru_cache

import pytest
import torch

from golden import assert_close, case_params, checkpoint_root, require_case, tensors
from pyramid_flow.text import PyramidTextEncoder

ATOL = 1e-4
# recorded name -> TextEmbeddings field
OUTPUTS = {
    "prompt_embeds": "prompt_embeds",
    "prompt_attention_mask": "attention_mask",
    "pooled_prompt_embeds": "pooled",
}


@lru_cache(maxsize=None)
def _encoder(variant: str) -> PyramidTextEncoder:
    return PyramidTextEncoder.from_pretrained(checkpoint_root(variant), variant)


def _calls(case):
    """(key prefix, prompt argument): every single prompt, then all prompts as one batch."""
    prompts = case["prompts"]
    return [(f"prompt{i}", prompt) for i, prompt in enumerate(prompts)] + [("batch", list(prompts))]


def _check_outputs(embeddings, recorded, prefix):
    for name, field in OUTPUTS.items():
        expected = recorded[f"{prefix}/{name}"]
        actual = getattr(embeddings, field)
        assert actual.dtype == expected.dtype, f"{prefix}/{name}: dtype {actual.dtype} != {expected.dtype}"
        if expected.dtype.is_floating_point:
            assert_close(actual, expected, ATOL, f"{prefix}/{name}")
        else:
            assert torch.equal(actual, expected), f"{prefix}/{name} differs"


@pytest.mark.parametrize("case", case_params("text_encoder"))
def test_token_ids_are_exact(case):
    case = require_case(case)
    recorded = tensors(case["file"])
    encoder = _encoder(case["variant"])
    compared = 0
    for prefix, prompt in _calls(case):
        tokens = encoder.tokenize(prompt)
        for key in sorted(recorded):
            # "<prefix>/<tokenizer folder>/<field>"; the embeddings keys have one '/' only
            parts = key.split("/")
            if parts[0] != prefix or len(parts) != 3:
                continue
            folder, field = parts[1:]
            assert folder in tokens, f"{key}: the encoder has no tokenizer '{folder}'"
            assert torch.equal(tokens[folder][field], recorded[key]), f"{key} differs"
            compared += 1
    assert compared > 0, "no token ids recorded in the case file"


@pytest.mark.parametrize("case", case_params("text_encoder"))
def test_embeddings_match(case):
    case = require_case(case)
    recorded = tensors(case["file"])
    encoder = _encoder(case["variant"])
    for prefix, prompt in _calls(case):
        _check_outputs(encoder.encode(prompt), recorded, prefix)
