"""The memory model against torch's MemTracker on the real-size models (fake tensors: no data, no compute), and
its behaviour: more history costs more until a history window caps it, tiles and windows bound the VAE."""

import pytest
import torch

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.memory import (VaeShape, decode_memory, dit_memory, dit_memory_estimate, encode_memory,
                                 vae_decode_memory, vae_encode_memory)
from pyramid_flow.testing.tiny import TINY_DIT
from pyramid_flow.vae import CausalVideoVAE

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="platform condition: torch builds without torch.distributed (some macOS and "
                                       "mobile builds) have no MemTracker to check the estimates against")

BAND = (0.8, 1.2)  # the estimate / tracked ratio the node's memory_required may be off by (observed: within 3%)
MIB = 2 ** 20
SMALL_VAE = {"encoder_block_out_channels": [32, 64, 64, 64], "decoder_block_out_channels": [32, 64, 64, 64],
             "encoder_layers_per_block": [1, 1, 1, 1], "decoder_layers_per_block": [2, 2, 2, 2],
             "encoder_norm_num_groups": 8, "decoder_norm_num_groups": 8}


@pytest.mark.parametrize("variant,height,width,past,window,dtype", [
    ("miniflux", 768, 1280, 30, None, torch.bfloat16),  # the last unit of 10 s at 768p: the largest official call
    ("miniflux", 384, 640, 15, None, torch.float32),  # the last unit of 5 s, where fp32 peaks in the single blocks
    ("sd3", 384, 640, 0, None, torch.bfloat16),  # the first frame: SD3's position-table upcast is the peak
    ("sd3", 768, 1280, 60, 16, torch.float32),  # 20 s at 768p with history_window 16
], ids=["miniflux-768p-10s-bf16", "miniflux-384p-5s-fp32", "sd3-384p-unit0-bf16", "sd3-768p-window16-fp32"])
def test_dit_estimate_matches_memtracker_at_real_size(variant, height, width, past, window, dtype):
    from pyramid_flow.testing.memory_probe import tracked_dit_peak

    tracked = tracked_dit_peak(variant, {}, height, width, past, 2, dtype, window)
    estimate = dit_memory_estimate(variant, {}, height, width, past, 2, dtype, window)
    assert BAND[0] <= estimate / tracked <= BAND[1], (estimate / MIB, tracked / MIB)


@pytest.mark.parametrize("decode,shape,window,tile,dtype", [
    (True, (1, 16, 3, 48, 80), 1, 256, torch.bfloat16),  # 384p, the official save_memory decode
    (True, (1, 16, 3, 48, 80), 2, 512, torch.float32),  # 384p, the official fast decode
    (True, (1, 16, 2, 16, 16), 1, None, torch.bfloat16),  # untiled
    (False, (1, 3, 17, 384, 640), 2, 256, torch.bfloat16),  # 384p encode, the node's defaults
], ids=["decode-tile256-w1-bf16", "decode-tile512-w2-fp32", "decode-untiled-bf16", "encode-tile256-w2-bf16"])
def test_vae_estimate_matches_memtracker_at_real_size(decode, shape, window, tile, dtype):
    from pyramid_flow.testing.memory_probe import tracked_vae_peak

    tracked = tracked_vae_peak(decode, shape, window, tile, 0.25, dtype)
    estimate = (vae_decode_memory if decode else vae_encode_memory)(shape, window, tile, 0.25, dtype)
    assert BAND[0] <= estimate / tracked <= BAND[1], (estimate / MIB, tracked / MIB)


@pytest.mark.parametrize("variant", ["miniflux", "sd3"])
@pytest.mark.parametrize("height,width", [(384, 640), (768, 1280)])
def test_more_history_needs_more_memory_until_the_window_caps_it(variant, height, width):
    def estimate(past, window=None):
        return dit_memory_estimate(variant, {}, height, width, past, history_window=window)

    whole = [estimate(past) for past in range(1, 61)]
    assert all(a < b for a, b in zip(whole, whole[1:]))
    windowed = [estimate(past, 16) for past in range(1, 61)]
    assert windowed[:16] == whole[:16]  # up to the window every past frame is seen
    assert set(windowed[15:]) == {whole[15]}  # then flat: the first frame and the 15 newest
    assert estimate(0) <= estimate(1)


def test_dit_estimate_scales_with_batch_and_dtype():
    one = dit_memory_estimate("miniflux", {}, 768, 1280, 30, batch=1)
    assert dit_memory_estimate("miniflux", {}, 768, 1280, 30, batch=2) == 2 * one  # CFG doubles every activation
    assert dit_memory_estimate("miniflux", {}, 768, 1280, 30, dtype=torch.float32) > one * 2 * 1.5


def test_vae_tiles_and_windows_bound_the_decode():
    latent = (1, 16, 31, 96, 160)  # 768p, 10 s
    tiled = vae_decode_memory(latent, window_size=1, tile_sample_min_size=256)
    assert tiled < vae_decode_memory(latent, window_size=2, tile_sample_min_size=512)
    assert tiled < vae_decode_memory(latent, window_size=1, tile_sample_min_size=None)
    assert tiled < vae_decode_memory(latent, window_size=2, tile_sample_min_size=256)
    # Longer videos add only their output frames (and the tile's gathered frames), not activations.
    longer = vae_decode_memory((1, 16, 61, 96, 160), window_size=1, tile_sample_min_size=256)
    frame_bytes = 3 * 768 * 1280 * 2
    assert 0 < longer - tiled < 3 * frame_bytes * 8 * 30


def test_built_model_estimates_agree_with_the_config_functions():
    for variant, config in TINY_DIT.items():
        dit = DIT_CLASSES[variant](**config, device="meta", dtype=torch.bfloat16)
        assert dit_memory(dit, 256, 384, 5) == dit_memory_estimate(variant, config, 256, 384, 5)
    for config in (SMALL_VAE, {}):
        vae = CausalVideoVAE(**config, device="meta", dtype=torch.float32)
        assert VaeShape.of_model(vae) == VaeShape.from_config(config)
        latent, video = (1, 16, 4, 32, 48), (1, 3, 25, 256, 384)
        assert decode_memory(vae, latent) == vae_decode_memory(latent, dtype=torch.float32, config=config)
        assert encode_memory(vae, video) == vae_encode_memory(video, dtype=torch.float32, config=config)
