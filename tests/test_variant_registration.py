"""A new model family is one module plus its registration (tests/fake_variant.py): everything else follows."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pyramid_flow.dit import DIT_CLASSES, load_dit, register_dit
from pyramid_flow.loading.detect import describe, identify_checkpoint
from pyramid_flow.loading.hub import folder_requirements, resolve_repo
from pyramid_flow.noise import SeededNoise
from pyramid_flow.sampler import PyramidSampler
from pyramid_flow.text import TextEmbeddings
from pyramid_flow.variants import VARIANTS, get_variant, register_variant

CONFIG = {"in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 64,
          "num_attention_heads": 1, "joint_attention_dim": 16, "pooled_projection_dim": 8}


@pytest.fixture
def fake():
    import fake_variant

    register_variant(fake_variant.FAKE)
    register_dit("fake")(fake_variant.FakeDiT)
    yield fake_variant
    VARIANTS.pop("fake")
    DIT_CLASSES.pop("fake")


def _checkpoint(folder, fake_variant):
    folder.mkdir()
    model = fake_variant.FakeDiT(**CONFIG)
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "PyramidFakeTransformer", **CONFIG}))
    return state


def test_a_registered_variant_is_detected_loaded_and_sampled(fake, tmp_path):
    state = _checkpoint(tmp_path / "diffusion_transformer_384p", fake)
    assert identify_checkpoint(state) == "dit_fake" and describe("dit_fake") == "a Pyramid Flow Fake DiT checkpoint"
    assert identify_checkpoint({k: v for k, v in state.items() if k != "fake_marker"}) == "dit_miniflux"
    model, info = load_dit(str(tmp_path / "diffusion_transformer_384p"))
    assert isinstance(model, fake.FakeDiT) and info.variant == "fake"
    assert get_variant("someone/pyramid-flow-fake") is fake.FAKE and resolve_repo("fake")[1] == "someone/pyramid-flow-fake"
    assert set(folder_requirements(fake.FAKE, components=("text",))) == {"text_encoder", "text_encoder_2", "tokenizer",
                                                                         "tokenizer_2"}
    text = TextEmbeddings(torch.randn(1, 128, 16), torch.ones(1, 128, dtype=torch.int64), torch.randn(1, 8))
    with pytest.raises(ValueError, match="the pooled vector of the fake CLIP"):
        text.validate("fake", pooled_dim=9)
    sampler = PyramidSampler(model, SeededNoise(0), torch.device("cpu"), torch.float32)
    latents = sampler.text_to_video(text, text, height=64, width=64, latent_frames=2, first_frame_steps=1, video_steps=1,
                                    guidance_scale=2.0, video_guidance_scale=2.0)
    assert latents.shape == (1, 16, 2, 8, 8) and torch.isfinite(latents).all()
