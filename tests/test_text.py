"""Text encoder loading errors, output dtypes, and the TextEmbeddings container."""

import os
import shutil

import pytest
import torch

from golden import checkpoint_root, manifest
from pyramid_flow.loading.state_dict import CheckpointError
from pyramid_flow.text import TEXT_TOKENS, PyramidTextEncoder, TextEmbeddings
from pyramid_flow.variants import get_variant


def _text_copy(tmp_path, variant: str) -> str:
    """The text encoder and tokenizer folders of a golden checkpoint, copied so a test can break them."""
    manifest()  # skips (or fails in CI) without the golden data
    spec = get_variant(variant)
    root = tmp_path / variant
    for folder in spec.text_encoder_folders + spec.tokenizer_folders:
        shutil.copytree(os.path.join(checkpoint_root(variant), folder), root / folder)
    return str(root)


@pytest.mark.parametrize("folder", ["tokenizer_3", "text_encoder_2"])
def test_missing_folder_names_folder_and_repo(tmp_path, folder):
    root = _text_copy(tmp_path, "sd3")
    shutil.rmtree(os.path.join(root, folder))
    with pytest.raises(CheckpointError, match=f"(?s){folder}/.*rain1011/pyramid-flow-sd3"):
        PyramidTextEncoder.from_pretrained(root, "sd3")


def test_missing_root_lists_every_folder(tmp_path):
    with pytest.raises(CheckpointError) as err:
        PyramidTextEncoder.from_pretrained(str(tmp_path / "nowhere"), "miniflux")
    for folder in ("text_encoder/", "text_encoder_2/", "tokenizer/", "tokenizer_2/"):
        assert folder in str(err.value)
    assert "rain1011/pyramid-flow-miniflux" in str(err.value)


@pytest.mark.parametrize("folder_variant, asked", [("sd3", "miniflux"), ("miniflux", "sd3")])
def test_other_variant_folder_is_refused(tmp_path, folder_variant, asked):
    root = _text_copy(tmp_path, folder_variant)
    with pytest.raises(CheckpointError, match="text_encoder_2.*variant expects"):
        PyramidTextEncoder.from_pretrained(root, asked)


def test_clip_without_projection_is_refused_for_sd3(tmp_path):
    root = _text_copy(tmp_path, "sd3")
    shutil.rmtree(os.path.join(root, "text_encoder"))
    shutil.copytree(os.path.join(checkpoint_root("miniflux"), "text_encoder"), os.path.join(root, "text_encoder"))
    with pytest.raises(CheckpointError, match="text_projection"):
        PyramidTextEncoder.from_pretrained(root, "sd3")


@pytest.mark.bf16
@pytest.mark.parametrize("variant", ["sd3", "miniflux"])
def test_outputs_in_requested_dtype(variant):
    manifest()
    encoder = PyramidTextEncoder.from_pretrained(checkpoint_root(variant), variant, dtype=torch.bfloat16)
    embeddings = encoder.encode(["a cat", "a dog on a log"])
    assert embeddings.prompt_embeds.dtype == torch.bfloat16
    assert embeddings.pooled.dtype == torch.bfloat16
    assert embeddings.attention_mask.dtype == torch.int64
    assert embeddings.prompt_embeds.shape[:2] == (2, TEXT_TOKENS)
    assert not embeddings.prompt_embeds.requires_grad


def _embeddings(batch=1, tokens=TEXT_TOKENS, dim=32, pooled=80, fill=0.0, **broken):
    """Well-formed embeddings, or broken ones: ``mask_tokens``, ``mask_dtype``, ``pooled_batch``."""
    mask_shape = (batch, broken.get("mask_tokens", tokens))
    return TextEmbeddings(
        prompt_embeds=torch.full((batch, tokens, dim), fill),
        attention_mask=torch.ones(mask_shape, dtype=broken.get("mask_dtype", torch.int64)),
        pooled=torch.full((broken.get("pooled_batch", batch), pooled), fill),
    )


def test_cat_keeps_order():
    negative, positive = _embeddings(fill=0.0), _embeddings(fill=1.0)
    negative.attention_mask[:, 5:] = 0
    both = TextEmbeddings.cat([negative, positive])
    assert both.prompt_embeds[:, 0, 0].tolist() == [0.0, 1.0]
    assert both.pooled[:, 0].tolist() == [0.0, 1.0]
    assert both.attention_mask.sum(dim=1).tolist() == [5, TEXT_TOKENS]


def test_to_keeps_mask_integer():
    moved = _embeddings().to("cpu", torch.float16)
    assert moved.prompt_embeds.dtype == moved.pooled.dtype == torch.float16
    assert moved.attention_mask.dtype == torch.int64


def test_validate_accepts_matching_shapes():
    embeddings = _embeddings(batch=2)
    assert embeddings.validate("sd3", text_dim=32, pooled_dim=80) is embeddings


@pytest.mark.parametrize(
    "embeddings, message",
    [
        (_embeddings(tokens=77), "128 tokens"),
        (_embeddings(mask_tokens=77), "attention_mask must be"),
        (_embeddings(mask_dtype=torch.float32), "int64"),
        (_embeddings(pooled_batch=2), "pooled must be"),
        (_embeddings(dim=48), "48 channels, the model expects 32"),
        (_embeddings(pooled=768), "CLIP-L and CLIP-G"),
        (TextEmbeddings([[0.0]], torch.ones(1, TEXT_TOKENS, dtype=torch.int64), torch.zeros(1, 80)), "torch.Tensor"),
    ],
)
def test_validate_rejects(embeddings, message):
    with pytest.raises(ValueError, match=message):
        embeddings.validate("sd3", text_dim=32, pooled_dim=80)
