"""Latent normalisation, frame arithmetic, resolution checks and pixel conversion."""

import pytest
import torch

from pyramid_flow import latents as latent_utils
from pyramid_flow.variants import MINIFLUX, SD3, get_variant


@pytest.mark.parametrize("variant", [SD3, MINIFLUX])
def test_normalize_uses_image_constants_for_frame_zero(variant):
    z = torch.randn(1, 16, 3, 4, 4)
    x = latent_utils.normalize(z, variant)
    torch.testing.assert_close(x[:, :, 0], (z[:, :, 0] - variant.image_norm.shift) * variant.image_norm.scale)
    torch.testing.assert_close(x[:, :, 1:], (z[:, :, 1:] - variant.video_norm.shift) * variant.video_norm.scale)
    torch.testing.assert_close(latent_utils.denormalize(x, variant), z)


def test_variants_by_official_name():
    assert get_variant("pyramid_flux") is MINIFLUX and get_variant("pyramid_mmdit") is SD3
    with pytest.raises(ValueError, match="Unknown Pyramid Flow variant"):
        get_variant("wan")


def test_durations_map_to_the_official_frame_counts():
    assert latent_utils.latent_frames_for_seconds(5) == 16 and latent_utils.video_frames_for(16) == 121
    assert latent_utils.latent_frames_for_seconds(10) == 31 and latent_utils.video_frames_for(31) == 241
    assert latent_utils.latent_frames_for_seconds(0) == 1 and latent_utils.video_frames_for(1) == 1


def test_duration_always_covers_the_request():
    for tenths in range(0, 120):
        seconds = tenths / 10
        frames = latent_utils.video_frames_for(latent_utils.latent_frames_for_seconds(seconds))
        assert frames >= seconds * latent_utils.FPS or frames == 1


@pytest.mark.parametrize("width,height", [(100, 384), (640, 360), (0, 384)])
def test_bad_resolution_names_the_fix(width, height):
    with pytest.raises(ValueError, match="multiple of 64"):
        latent_utils.check_resolution(width, height)


def test_resolution_warning_for_untrained_sizes():
    assert latent_utils.resolution_warning(640, 384, 16, "384p") is None
    assert "not a trained resolution" in latent_utils.resolution_warning(1280, 768, 16, "384p")
    assert "maximum of 16" in latent_utils.resolution_warning(640, 384, 31, "384p")
    assert latent_utils.resolution_warning(320, 128, 4, None) is None


def test_uint8_conversion_truncates():
    video = torch.tensor([-1.5, -1.0, 0.0, 0.5, 0.999, 1.2]).view(1, 1, 6, 1, 1).expand(1, 3, 6, 1, 1)
    frames = latent_utils.to_uint8(video)
    assert frames.shape == (6, 1, 1, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 127, 191, 254, 255]


def test_image_checkpoint_refuses_video_lengths():
    latent_utils.check_latent_frames(1, "image")
    latent_utils.check_latent_frames(31, "768p")
    with pytest.raises(ValueError, match="image DiT"):
        latent_utils.check_latent_frames(2, "image")
    with pytest.raises(ValueError, match="at least 1"):
        latent_utils.check_latent_frames(0, "384p")
