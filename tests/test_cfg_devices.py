"""The CFG halves on two devices of one process (the ComfyUI Multi-GPU node's engine): the positive half on a
second copy of the DiT in a worker thread gives the latents of one batch-2 call per step, for text-to-video and
image-to-video; a failure on the second device reaches the caller."""

import copy

import pytest
import torch

from dit_inputs import tiny_dit
from pyramid_flow import orchestration
from pyramid_flow.placement import DevicePlacement
from pyramid_flow.text.embeddings import TextEmbeddings
from pyramid_flow.variants import get_variant

LATENT_ATOL = 1e-3  # the golden tolerance for latents (batch 1 against batch 2: measured 2e-5, guidance 7 amplifies)
CPU = torch.device("cpu")


def text(model, value: float, real_tokens: int) -> TextEmbeddings:
    generator = torch.Generator().manual_seed(int(value * 10))
    mask = torch.zeros(1, 128, dtype=torch.int64)
    mask[:, :real_tokens] = 1
    return TextEmbeddings(torch.randn(1, 128, model.text_dims[0], generator=generator), mask,
                          torch.randn(1, model.text_dims[1], generator=generator))


def run(model, second=None, **request):
    settings = orchestration.SamplingSettings(first_frame_steps=[1, 1, 1], video_steps=[1, 1, 1], guidance_scale=7.0,
                                              video_guidance_scale=5.0, seed=3)
    with torch.no_grad():
        return orchestration.sample(DevicePlacement(model, CPU), text(model, 0.5, 9), text(model, 0.2, 3), settings,
                                    latent_frames=3, dtype=torch.float32, second=second, **request)


@pytest.mark.parametrize("variant", ["miniflux", "sd3"])
@pytest.mark.parametrize("request_", ["text-to-video", "image-to-video"])
def test_the_positive_half_on_a_second_device_gives_the_one_device_latents(variant, request_):
    model = tiny_dit(variant)
    request = dict(size=(64, 128)) if request_ == "text-to-video" else dict(
        image_moments=torch.randn(1, 32, 1, 8, 16, generator=torch.Generator().manual_seed(4)),
        variant=get_variant(variant))
    one = run(model, **request)
    second, batches = copy.deepcopy(model), {"first": [], "second": []}
    for name, dit in (("first", model), ("second", second)):
        dit.register_forward_pre_hook(lambda module, args, name=name: batches[name].append(args[0][-1].shape[0]))
    two = run(model, second=DevicePlacement(second, CPU), **request)
    steps = 9 if request_ == "text-to-video" else 6  # 3 frames x 3 stages; image-to-video's first frame is given
    assert batches["first"] == batches["second"] == [1] * steps  # every step: one half on each device, at batch 1
    assert two.shape == one.shape == (1, 16, 3, 8, 16)
    assert (two - one).abs().max().item() <= LATENT_ATOL


def test_a_failure_on_the_second_device_reaches_the_caller():
    model = tiny_dit("miniflux")
    broken = copy.deepcopy(model)
    broken.forward = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("CUDA out of memory on cuda:1"))
    with pytest.raises(RuntimeError, match="out of memory on cuda:1"):
        run(model, second=DevicePlacement(broken, CPU), size=(64, 128))
