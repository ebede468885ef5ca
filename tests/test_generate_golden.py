"""Full generate() / generate_i2v() runs against the official outputs, with the official noise replayed.

Everything is read from the manifest: checkpoint folder, call kwargs, noise order, decode settings. Every recorded
tensor (text embeddings, histories, per-step velocities and samples, stage results, final latents, image encode,
decoded floats and uint8 frames) is compared.
"""

import os
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image

from golden import (assert_close, case_params, checkpoint_root, golden_root, replay_noise, require_case, tensors,
                    variant_info)
from tolerance import assert_within_ulps
from pyramid_flow import latents as latent_utils
from pyramid_flow.image import image_to_vae_input
from pyramid_flow.pipeline import PyramidFlowPipeline
from pyramid_flow.text import DEFAULT_NEGATIVE_PROMPT, effective_prompts
from pyramid_flow.vae import ENCODE_TILE

TEXT_ATOL = 1e-4
LATENT_ATOL = 1e-3


BF16_ENVELOPE = 2.0  # our bf16 run may deviate from the fp32 golden at most 2x as much as the official bf16 run
BF16_FALLBACK = 0.1  # relative to the golden latents' max, when a manifest records no official bf16 run


@lru_cache(maxsize=None)
def pipeline(variant: str, dtype: torch.dtype = torch.float32) -> PyramidFlowPipeline:
    folder = variant_info(variant)["dit_folder"]
    return PyramidFlowPipeline.from_pretrained(checkpoint_root(variant), dit_folder=folder, dtype=dtype)


class RecordingDiT(torch.nn.Module):
    """Passes calls through and keeps the last clip list, so histories can be checked."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit
        self.last_clips = None

    def forward(self, clips, *args):
        self.last_clips = clips
        return self.dit(clips, *args)


def run_recorded(pipe: PyramidFlowPipeline, case: dict, recorded: dict):
    """Replay the case's call; returns (final latents, {golden key: our tensor})."""
    ours = {}
    recorder = RecordingDiT(pipe.dit)

    def on_step(info):
        prefix = f"unit{info.unit}/stage{info.stage}"
        if info.step == 0:
            ours[f"{prefix}/start_latent"] = info.sample
            if info.stage == 0:
                ours[f"unit{info.unit}/input_noise"] = info.sample
            for j, clip in enumerate(recorder.last_clips[:-1]):
                ours[f"unit{info.unit}/past_cond/stage{info.stage}/{j}"] = clip
        ours[f"{prefix}/step{info.step}/velocity"] = info.velocity
        ours[f"{prefix}/step{info.step}/prev_sample"] = info.latent
        if info.step == info.steps_in_stage - 1:
            ours[f"{prefix}/out"] = info.latent

    kwargs = dict(case["kwargs"])
    pipe.dit, original = recorder, pipe.dit
    try:
        if "input_image" in kwargs:
            kwargs["input_image"] = Image.open(os.path.join(golden_root(), "cases", case["image_png"])).convert("RGB")
            final = pipe.generate_i2v(**kwargs, noise=replay_noise(case, recorded), output_type="latent", callback=on_step)
        else:
            final = pipe.generate(**kwargs, noise=replay_noise(case, recorded), output_type="latent", callback=on_step)
    finally:
        pipe.dit = original
    return final, ours


@pytest.mark.parametrize("case", case_params("t2v") + case_params("i2v"))
def test_generate_matches_official(case):
    case = require_case(case)
    recorded = tensors(case["file"])
    pipe = pipeline(case["variant"])

    negative_prompt = case["kwargs"].get("negative_prompt", DEFAULT_NEGATIVE_PROMPT)
    prompts, negatives = effective_prompts(case["kwargs"]["prompt"], negative_prompt)
    assert prompts + negatives == case["effective_prompts"]
    cond, uncond = pipe.encode_prompt(case["kwargs"]["prompt"], negative_prompt)
    for call, emb in (("call0", cond), ("call1", uncond)):
        assert_close(emb.prompt_embeds, recorded[f"text/{call}/prompt_embeds"], TEXT_ATOL, f"text/{call}")
        assert_close(emb.pooled, recorded[f"text/{call}/pooled_prompt_embeds"], TEXT_ATOL, f"text/{call} pooled")
        assert torch.equal(emb.attention_mask.cpu(), recorded[f"text/{call}/prompt_attention_mask"])

    final, ours = run_recorded(pipe, case, recorded)
    assert_close(final, recorded["final_latents"], LATENT_ATOL, "final_latents")
    per_step = [k for k in recorded if k.startswith("unit")]
    assert sorted(per_step) == sorted(ours), "recorded unit/stage/step keys differ from the ones our sampler produced"
    for key in per_step:
        assert_close(ours[key], recorded[key], LATENT_ATOL, key)

    decode_kwargs = case["vae_decode_call"]["kwargs"]
    video = pipe.vae.decode(latent_utils.denormalize(final, pipe.variant), **decode_kwargs)
    if "decode/vae_decode_float" in recorded:  # trimmed from tests/parity (scripts/vendor_golden.py); the frames stay
        assert_close(video, recorded["decode/vae_decode_float"], LATENT_ATOL, "decode/vae_decode_float")
    frames = latent_utils.to_uint8(video)
    expected_frames = recorded["decode/frames_uint8"]
    assert frames.shape == expected_frames.shape
    assert (frames.int() - expected_frames.int()).abs().max().item() <= 1


@pytest.mark.parametrize("case", case_params("i2v"))
def test_image_encode_matches_official(case):
    case = require_case(case)
    recorded = tensors(case["file"])
    pipe = pipeline(case["variant"])
    image = Image.open(os.path.join(golden_root(), "cases", case["image_png"])).convert("RGB")
    assert torch.equal(torch.from_numpy(np.asarray(image).copy()), recorded["image/pil_uint8"])
    video = image_to_vae_input(image)
    assert_within_ulps(video, recorded["image/vae_input"], name="image/vae_input")  # torchvision's transforms vs ours
    moments = pipe.vae.encode(video, **{"tile_sample_min_size": ENCODE_TILE, **case["image_encode_call"]})
    assert_close(moments, recorded["image/posterior_moments"], TEXT_ATOL, "image/posterior_moments")


@pytest.mark.bf16
@pytest.mark.parametrize("case", case_params("t2v") + case_params("i2v"))
def test_bf16_run_stays_within_the_official_bf16_envelope(case):
    """bf16 is the default on GPUs: the same replayed run in bf16 must land as close to the fp32 golden latents as
    the official pipeline's own bf16 run did (manifest ``bf16_vs_fp32``)."""
    case = require_case(case)
    recorded = tensors(case["file"])
    final, _ = run_recorded(pipeline(case["variant"], torch.bfloat16), case, recorded)
    expected = recorded["final_latents"]
    official = variant_info(case["variant"]).get("bf16_vs_fp32", {}).get(f"{case['name'].split('/')[-1]}_final_latents")
    bound = BF16_ENVELOPE * official["max_abs_diff"] if official else BF16_FALLBACK * expected.abs().max().item()
    assert final.dtype == torch.bfloat16
    diff = (final.float() - expected).abs().max().item()
    assert diff <= bound, f"bf16 final latents differ by {diff:.3g} from fp32, bound {bound:.3g}"
