"""The causal VAE without golden data: frame arithmetic, chunking, tiling against a literal transcription of the
official tile loops, streaming, loading (single bf16 file, wrong and broken files, dtypes)."""

import json
import os
import types

import pytest
import torch
from safetensors.torch import save_file

from pyramid_flow.loading.state_dict import CheckpointError
from tolerance import assert_within_ulps
from pyramid_flow import ops
from pyramid_flow.vae import CausalVideoVAE, load_vae
from pyramid_flow.vae.layers import CausalCache, CausalConv3d
from pyramid_flow.vae.loading import infer_config

# Small, with the official 32 GroupNorm groups so that a config-less single file can be read back.
CONFIG = {
    "encoder_block_out_channels": [32, 64, 64, 64], "decoder_block_out_channels": [32, 64, 64, 64],
    "encoder_layers_per_block": [1, 1, 1, 1], "decoder_layers_per_block": [2, 1, 1, 1],
}


def random_vae(config=CONFIG, seed=0) -> CausalVideoVAE:
    """Random weights that make every path matter: N(0, 1/fan_in) matrices, perturbed norms and biases."""
    generator = torch.Generator().manual_seed(seed)
    vae = CausalVideoVAE(**config)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(1 + 0.05 * noise if name.endswith("weight") and "norm" in name else 0.02 * noise)
    return vae.eval()


@pytest.fixture(scope="module")
def vae():
    return random_vae()


def inputs(frames=17, latent_frames=3, height=24, width=40, seed=1):
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
    latent = torch.randn(1, 16, latent_frames, height // 8, width // 8, generator=generator)
    return video, latent


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("latent_frames", [1, 2, 4])
def test_frame_counts(vae, latent_frames):
    video, latent = inputs(frames=8 * latent_frames - 7, latent_frames=latent_frames)
    assert vae.decode(latent).shape == (1, 3, 8 * latent_frames - 7, 24, 40)
    assert vae.encode(video).shape == (1, 32, latent_frames, 3, 5)


def test_chunked_equals_plain(vae):
    video, latent = inputs()
    plain_decode = vae.decode(latent)
    for window in (1, 2, 5):
        assert max_diff(vae.decode(latent, temporal_chunk=True, window_size=window), plain_decode) < 1e-5
    plain_encode = vae.encode(video)
    for window in (1, 2):  # latent frames: 8 and 16 video frames after the first chunk
        assert max_diff(vae.encode(video, temporal_chunk=True, window_size=window), plain_encode) < 1e-5


def padded_path_only(monkeypatch):
    """Every conv takes the zero-padded path (what it does when ComfyUI casts its weights per call)."""
    monkeypatch.setattr(CausalConv3d, "last_tap", lambda self, x, out_channels=slice(None): None)


def test_one_frame_first_calls_equal_the_padded_convs(vae, monkeypatch):
    """A single frame (text-to-image, the image of image-to-video) takes each conv's last temporal tap alone and
    the temporal upsamplers' kept channels: the padded computation less its zero terms (float rounding apart)."""
    video, latent = inputs(frames=1, latent_frames=1)
    fast_decode, fast_encode = vae.decode(latent), vae.encode(video)
    padded_path_only(monkeypatch)
    assert_within_ulps(fast_decode, vae.decode(latent), ulps=16, name="decode")
    assert_within_ulps(fast_encode, vae.encode(video), ulps=16, name="encode")


@pytest.mark.parametrize("stride", [1, (2, 1, 1), (1, 2, 2)])
def test_a_stream_that_starts_with_one_frame_continues_from_its_cache(stride):
    conv = CausalConv3d(8, 16, 3, stride=stride, operations=ops).eval()
    frames = torch.randn(1, 8, 5, 12, 12).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        cache = CausalCache()
        chunks = [conv(frames[:, :, :1], cache), conv(frames[:, :, 1:3], cache), conv(frames[:, :, 3:], cache)]
        assert conv(frames[:, :, :1], CausalCache()).shape[2] == 1
        assert_within_ulps(torch.cat(chunks, dim=2), conv(frames), ulps=16)


def test_comfyui_cast_layers_take_the_padded_path():
    conv = CausalConv3d(8, 16, 3, operations=ops).eval()
    frame = torch.randn(1, 8, 1, 6, 6)
    assert conv.last_tap(frame) is not None
    conv.conv.comfy_cast_weights = True  # ComfyUI moves or casts this layer's weight inside its own forward
    assert conv.last_tap(frame) is None


def test_chunked_encode_needs_whole_latent_frames(vae):
    video, _ = inputs(frames=12)
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        vae.encode(video, temporal_chunk=True, window_size=1)


# --- tiling: compare with the official algorithm written out literally (all tiles kept, blended in place) ------


def official_blend(tiles, blend, row_limit):
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            for dim, prev in ((3, tiles[i - 1][j] if i else None), (4, row[j - 1] if j else None)):
                if prev is None:
                    continue
                extent = min(prev.shape[dim], tile.shape[dim], blend)
                for k in range(extent):
                    tile.select(dim, k)[:] = (prev.select(dim, prev.shape[dim] - extent + k) * (1 - k / extent)
                                              + tile.select(dim, k) * (k / extent))
    return torch.cat([torch.cat([t[:, :, :, :row_limit, :row_limit] for t in row], 4) for row in tiles], 3)


def official_tiled_decode(vae, z, tile_px, overlap, window):
    tile = int(tile_px / 8)
    stride, blend = int(tile * (1 - overlap)), int(tile_px * overlap)
    tiles = [[vae.decode(z[:, :, :, i : i + tile, j : j + tile], temporal_chunk=True, window_size=window)
              for j in range(0, z.shape[4], stride)] for i in range(0, z.shape[3], stride)]
    return official_blend(tiles, blend, tile_px - blend)


def official_tiled_encode(vae, x, tile_px, overlap, window):
    stride, tile = int(tile_px * (1 - overlap)), int(tile_px / 8)
    blend = int(tile * overlap)
    tiles = [[vae.encode(x[:, :, :, i : i + tile_px, j : j + tile_px], temporal_chunk=True, window_size=window)
              for j in range(0, x.shape[4], stride)] for i in range(0, x.shape[3], stride)]
    return official_blend(tiles, blend, tile - blend)


@pytest.mark.parametrize("tile_px, overlap, height, width", [
    (16, 0.25, 24, 32), (24, 0.25, 40, 56), (32, 0.4, 40, 56), (16, 0.0, 24, 40),
])
def test_tiled_decode_matches_official_loops(vae, tile_px, overlap, height, width):
    _, latent = inputs(latent_frames=2, height=height, width=width)
    expected = official_tiled_decode(vae, latent, tile_px, overlap, window=1)
    out = vae.decode(latent, temporal_chunk=True, window_size=1, tile_sample_min_size=tile_px, tile_overlap=overlap)
    # the assembler blends in place with the same formula as the transcription above, in its own code
    assert_within_ulps(out, expected, name="tiled decode")
    streamed = torch.cat(list(vae.iter_decode(latent, 1, tile_sample_min_size=tile_px, tile_overlap=overlap)), 2)
    assert_within_ulps(streamed, expected, name="streamed tiled decode")


@pytest.mark.parametrize("tile_px", [None, 16])
def test_decode_assembles_the_video_on_the_output_device(vae, tile_px):
    """output_device: the video is allocated there (``meta`` stands in for the CPU beside a GPU) and filled piece by
    piece; on the compute device itself the values are those of the default path."""
    _, latent = inputs(latent_frames=3, height=24, width=32)
    kwargs = dict(temporal_chunk=True, window_size=1, tile_sample_min_size=tile_px)
    default = vae.decode(latent, **kwargs)
    # bit-exact: on the CPU both run the same kernels on the same tiles; only where the pieces are assembled differs
    assert torch.equal(vae.decode(latent, **kwargs, output_device=torch.device("cpu")), default)
    elsewhere = vae.decode(latent, **kwargs, output_device=torch.device("meta"))
    assert elsewhere.device.type == "meta" and elsewhere.shape == default.shape


def test_streamed_decode_can_park_the_tile_caches(vae, monkeypatch):
    """iter_decode(cache_device=...) moves each tile's cache there after its chunk and back before the next one;
    the frames are unchanged."""
    from pyramid_flow.vae.layers import CausalCache
    from pyramid_flow.vae.streaming import temporal_chunks

    _, latent = inputs(latent_frames=3, height=24, width=32)
    expected = torch.cat(list(vae.iter_decode(latent, 1, tile_sample_min_size=16)), dim=2)
    moves = []
    original = CausalCache.to

    def spy(cache, device):
        moves.append((id(cache), torch.device(device).type))
        return original(cache, device)

    monkeypatch.setattr(CausalCache, "to", spy)
    parked = torch.cat(list(vae.iter_decode(latent, 1, tile_sample_min_size=16, cache_device=torch.device("cpu"))), 2)
    assert torch.equal(parked, expected)  # bit-exact: the same computation, the caches copied to the CPU and back
    caches = {cache for cache, _ in moves}
    assert len(caches) > 1  # one per tile
    chunks = len(temporal_chunks(latent.shape[2], 1))
    assert all(len([m for m in moves if m[0] == cache]) == 2 * chunks for cache in caches)  # back and away, per chunk


@pytest.mark.parametrize("tile_px, overlap", [(16, 0.25), (24, 0.25), (32, 0.5)])
def test_tiled_encode_matches_official_loops(vae, tile_px, overlap):
    video, _ = inputs(frames=9, height=40, width=48)
    expected = official_tiled_encode(vae, video, tile_px, overlap, window=1)
    out = vae.encode(video, temporal_chunk=True, window_size=1, tile_sample_min_size=tile_px, tile_overlap=overlap)
    assert_within_ulps(out, expected, name="tiled encode")


def test_no_tiling_when_it_fits(vae):
    _, latent = inputs()
    assert torch.equal(vae.decode(latent, tile_sample_min_size=40), vae.decode(latent))  # the same untiled path
    with pytest.raises(ValueError, match="larger tile size"):
        vae.decode(latent, tile_sample_min_size=8)


def test_progress_callback_and_interrupt(vae):
    _, latent = inputs(latent_frames=3)
    seen = []
    vae.decode(latent, temporal_chunk=True, window_size=1, tile_sample_min_size=16,
               callback=lambda done, total: seen.append((done, total)))
    total = 2 * 15  # chunks (2 + 1 latent frames) x tiles (range(0, 3, 1) rows x range(0, 5, 1) columns)
    assert seen == [(k, total) for k in range(1, total + 1)]

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vae.decode(latent, temporal_chunk=True, window_size=1, callback=interrupt)


def test_layers_come_from_operations():
    class Conv3d(torch.nn.Conv3d):
        pass

    class Linear(torch.nn.Linear):
        pass

    class GroupNorm(torch.nn.GroupNorm):
        pass

    ops = types.SimpleNamespace(Conv3d=Conv3d, Linear=Linear, GroupNorm=GroupNorm)
    model = CausalVideoVAE(**CONFIG, device="meta", operations=ops)
    weighted = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    assert weighted and all(isinstance(m, (Conv3d, Linear, GroupNorm)) for m in weighted)


# --- loading ------------------------------------------------------------------------------------------------


@pytest.mark.bf16
def test_single_file_bf16_round_trip(vae, tmp_path):
    state_dict = {f"vae.{k}": v.to(torch.bfloat16) for k, v in vae.state_dict().items()}
    path = str(tmp_path / "pyramid_flow_vae_bf16.safetensors")
    save_file(state_dict, path)
    loaded = load_vae(path, dtype=torch.bfloat16)
    assert infer_config({k[4:]: v for k, v in state_dict.items()}, path).items() >= CONFIG.items()
    for key, value in vae.state_dict().items():
        stored = loaded.state_dict()[key]
        assert stored.dtype == (torch.float32 if "norm" in key else torch.bfloat16), key
        assert torch.equal(stored, value.to(torch.bfloat16).to(stored.dtype)), key
    _, latent = inputs(latent_frames=2)
    reference = vae.decode(latent)
    out = loaded.decode(latent.to(torch.bfloat16)).float()
    assert out.dtype == torch.float32 and max_diff(out, reference) / reference.abs().max() < 0.05


def test_folder_with_config(vae, tmp_path):
    folder = tmp_path / "causal_video_vae"
    folder.mkdir()
    save_file(vae.state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "CausalVideoVAE", "scaling_factor": 0.13025, **CONFIG}))
    loaded = load_vae(str(folder))
    _, latent = inputs(latent_frames=2)
    assert_within_ulps(loaded.decode(latent), vae.decode(latent), name="folder load")  # another load path


def test_dit_file_is_refused(tmp_path):
    path = str(tmp_path / "pyramid_flow_miniflux_bf16_v2.safetensors")
    save_file({"x_embedder.weight": torch.zeros(4, 4), "single_transformer_blocks.0.proj_out.weight": torch.zeros(4, 4)},
              path)
    with pytest.raises(CheckpointError, match="DiT checkpoint, not a VAE.*'Pyramid Flow Model Loader'"):
        load_vae(path)


def test_unrelated_file_is_refused(tmp_path):
    path = str(tmp_path / "other.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no Pyramid Flow VAE keys"):
        load_vae(path)


def test_truncated_file_is_refused(vae, tmp_path):
    path = str(tmp_path / "pyramid_flow_vae_fp32.safetensors")
    save_file(vae.state_dict(), path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vae(str(tmp_path / "nope.safetensors"))


def test_fp16_is_refused(tmp_path):
    with pytest.raises(ValueError, match="float16"):
        load_vae(str(tmp_path / "any.safetensors"), dtype=torch.float16)
