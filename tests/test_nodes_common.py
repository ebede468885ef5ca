"""Fast lane: node logic that needs no ComfyUI (durations, sizes, T5 windows, IMAGE conversions, resizing)."""

import pytest
import torch

from pack_loader import load_pack_module
from pyramid_flow.image import first_frame_input
from pyramid_flow.orchestration import encodable_frames, frames_to_video, smaller_settings

common = load_pack_module("nodes.common")


@pytest.mark.parametrize("seconds,temp,frames", [(0.0, 1, 1), (5.0, 16, 121), (10.0, 31, 241), (1.0, 4, 25)])
def test_duration_is_described_with_its_frame_count(seconds, temp, frames):
    text = common.describe_duration(seconds)
    assert f"{frames} frames" in text and f"{temp} latent frames" in text


@pytest.mark.parametrize("width,height", [(640, 384), (1280, 768), (64, 64), (1024, 1024)])
def test_valid_sizes(width, height):
    common.check_size(width, height)


@pytest.mark.parametrize("width,height,name", [(100, 384, "width 100"), (640, 400, "height 400"), (32, 384, "width 32")])
def test_invalid_sizes_name_the_fix(width, height, name):
    with pytest.raises(ValueError, match=f"{name} is not a multiple of 64"):
        common.check_size(width, height)


def test_a_size_from_another_input_names_that_input():
    """A 72-px image latent into the sampler: the message says the size comes from image_latent, not the widgets."""
    with pytest.raises(ValueError, match="72x72 comes from 'image_latent'.*width 72 is not a multiple of 64.*Image To Video"):
        common.check_size(72, 72, source="'image_latent'")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_by_name(value):
    with pytest.raises(ValueError, match=f"'video_guidance_scale' is {value}: it must be a finite number"):
        common.check_finite({"seed": 3, "guidance_scale": 7.0, "video_guidance_scale": value})
    common.check_finite({"guidance_scale": 0.0, "name": "nan"})  # finite numbers and other types pass


def test_t5_window_short_prompt_keeps_eos_and_drops_padding():
    ids, n = common.t5_window([5, 6, 7, 1, 0, 0, 0])
    assert ids == [5, 6, 7, 1] and n == 4


def test_t5_window_truncates_like_hf():
    long = list(range(2, 302)) + [1]
    ids, n = common.t5_window(long)
    assert n == 128 and ids[-1] == 1 and ids[:127] == long[:127]


def test_t5_window_without_eos():
    ids, n = common.t5_window([9, 9, 0, 0])
    assert ids == [9, 9, 1] and n == 3


def test_pad_embeddings():
    hidden = torch.randn(1, 5, 8)
    out, mask = common.pad_embeddings(hidden, 5, 128)
    assert out.shape == (1, 128, 8) and mask.dtype == torch.int64
    assert mask.sum() == 5 and torch.equal(out[:, :5], hidden) and not out[:, 5:].any()


def test_video_image_round_trip():
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    image = common.video_to_image(video.clone())
    assert image.shape == (9, 16, 24, 3) and image.min() >= 0 and image.max() <= 1
    assert torch.allclose(frames_to_video(image), video, atol=1e-6)


def test_video_to_image_clamps():
    image = common.video_to_image(torch.full((1, 3, 1, 8, 8), 3.0))
    assert torch.equal(image, torch.ones(1, 8, 8, 3))


@pytest.mark.parametrize("frames,expected", [(1, 1), (8, 1), (9, 9), (16, 9), (17, 17), (121, 121)])
def test_encodable_frames(frames, expected):
    assert encodable_frames(frames) == expected


@pytest.mark.parametrize("bad,needle", [
    (torch.rand(8, 8, 3), "IMAGE"),
    (torch.rand(0, 8, 8, 3), "empty"),
    (torch.rand(1, 1, 1, 3), "'images' is 1x1 pixels; it needs at least 8x8"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
    ("not an image", "IMAGE"),
])
def test_check_image_errors(bad, needle):
    with pytest.raises(ValueError, match=needle):
        common.check_image(bad, "images")


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_resize_keeps_aspect(mode):
    # a wide image with a white left half: crop keeps the centre, pad adds black bars top and bottom
    image = torch.zeros(1, 100, 400, 3)
    image[:, :, :200] = 1.0
    out = (first_frame_input(image, (128, 64), mode)[:, :, 0].permute(0, 2, 3, 1) + 1) / 2  # back to [0, 1]
    assert out.shape == (1, 64, 128, 3)
    if mode == "pad":
        assert out[0, 0].max() == 0 and out[0, -1].max() == 0  # letterbox rows
        assert out[0, 32, 10].min() > 0.9  # image content is not squashed away
    else:
        assert out[0, :, 10].min() > 0.9 and out[0, :, -10].max() < 0.1


@pytest.mark.parametrize("height,width", [(10, 7000), (7000, 10)])
def test_pad_fits_extreme_aspect_ratios(height, width):
    """A 7000x10 image padded into 640x384 used to round its short side to 0 px."""
    out = first_frame_input(torch.rand(1, height, width, 3), (640, 384), "pad")
    assert out.shape == (1, 3, 1, 384, 640) and torch.isfinite(out).all()


def test_resize_grayscale_and_rgba():
    assert first_frame_input(torch.rand(1, 64, 64, 1), (64, 64), "crop").shape == (1, 3, 1, 64, 64)
    assert first_frame_input(torch.rand(1, 64, 64, 4), (128, 64), "pad").shape == (1, 3, 1, 64, 128)


def test_oom_retry_settings_shrink_to_a_floor():
    seq, settings = [], (0, 4)
    while settings is not None:
        seq.append(settings)
        settings = smaller_settings(*settings)
    assert seq == [(0, 4), (0, 1), (512, 1), (256, 1), (128, 1), (64, 1)]
