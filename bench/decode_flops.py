"""The VAE decode on CPU: achieved GFLOP/s of the exact decode, and what the faster settings cost.

1. Achieved rate: the released VAE's decoder (random weights; speed does not depend on the values) decodes a
   latent in one 256-px tile with the official save_memory preset. Forward hooks count the multiply-adds every
   convolution and Linear computes (2 x output elements x input channels x kernel taps, zero padding frames
   included where they are multiplied); the same run times oneDNN's float32 matrix product, the fastest kernel this CPU
   has, as the ceiling.
2. Faster settings, for when memory allows: a latent two tiles wide decoded with the save_memory preset (tile 256,
   window 1: the exact official output), the official fast preset (tile 512, window 2) and untiled with window 4:
   time, and the difference from the save_memory output (max |diff| on the [-1, 1] video, PSNR of the 8-bit
   frames). The window changes only float rounding; the tile changes where tiles are blended.

Run: .venv/bin/python -m bench.decode_flops [--frames 1 3] [--size 32] [--threads 2]
"""

import argparse
import time

import torch

from pyramid_flow import ops
from pyramid_flow.testing.tiny import with_random_weights
from pyramid_flow.vae import CausalVideoVAE
from pyramid_flow.latents import to_uint8
from pyramid_flow.vae.model import FAST_DECODE, SAVE_MEMORY_DECODE, DecodeSettings

from .measure import psnr_uint8


def matmul_ceiling(repeats: int = 3) -> float:
    """GFLOP/s of oneDNN's float32 matmul on a DiT-sized product (the CPU's practical peak)."""
    x, w = torch.randn(4096, 2048), torch.randn(2048, 2048)
    linear = lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")  # noqa: E731
    linear()
    start = time.perf_counter()
    for _ in range(repeats):
        linear()
    return 2 * 4096 * 2048 * 2048 * repeats / (time.perf_counter() - start) / 1e9


def count_flops(model: torch.nn.Module) -> list:
    """A running count of the multiply-adds (x2) of every convolution (all go through ``ops.conv3d``, the last-tap
    path of a single frame included) and every Linear."""
    total = [0]
    conv3d = ops.conv3d

    def counted_conv3d(x, weight, *args, **kwargs):
        out = conv3d(x, weight, *args, **kwargs)
        total[0] += 2 * weight[0].numel() * out.numel()
        return out

    def hook(module, inputs, output):
        total[0] += 2 * module.weight[0].numel() * output.numel()

    ops.conv3d = counted_conv3d
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook)
    return total


def timed_decode(vae, latent: torch.Tensor, settings: DecodeSettings):
    with torch.no_grad():
        start = time.perf_counter()
        video = vae.decode(latent, temporal_chunk=True, window_size=settings.window_size,
                           tile_sample_min_size=settings.tile_sample_min_size)
        return video, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 3], help="latent frames per case")
    parser.add_argument("--size", type=int, default=32, help="latent height and width (32: one 256-px tile)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = with_random_weights(CausalVideoVAE(device="meta", operations=ops), torch.Generator().manual_seed(0))
    flops = count_flops(vae)
    ceiling = matmul_ceiling()
    print(f"oneDNN float32 matmul on this CPU: {ceiling:.0f} GFLOP/s ({args.threads} threads)\n")
    print("| latent | video frames | GFLOP | seconds | GFLOP/s | of the matmul ceiling |")
    print("|---|---|---|---|---|---|")
    for frames in args.frames:
        latent = torch.randn(1, 16, frames, args.size, args.size)
        with torch.no_grad():
            vae.decode(latent, temporal_chunk=True, window_size=SAVE_MEMORY_DECODE.window_size,
                       tile_sample_min_size=SAVE_MEMORY_DECODE.tile_sample_min_size)  # warm-up
            flops[0] = 0
            start = time.perf_counter()
            video = vae.decode(latent, temporal_chunk=True, window_size=SAVE_MEMORY_DECODE.window_size,
                               tile_sample_min_size=SAVE_MEMORY_DECODE.tile_sample_min_size)
            seconds = time.perf_counter() - start
        rate = flops[0] / seconds / 1e9
        print(f"| [1,16,{frames},{args.size},{args.size}] | {video.shape[2]} | {flops[0] / 1e9:.0f} | {seconds:.2f} | "
              f"{rate:.0f} | {rate / ceiling:.0%} |")
    latent = torch.randn(1, 16, max(args.frames), args.size, 2 * args.size)
    print(f"\nlatent {list(latent.shape)}:\n")
    print("| settings | seconds | speed-up | max abs diff vs save_memory | PSNR of the frames (dB) |")
    print("|---|---|---|---|---|")
    exact, base = timed_decode(vae, latent, SAVE_MEMORY_DECODE)
    untiled = DecodeSettings(window_size=4, tile_sample_min_size=None)
    for name, settings in [("save_memory (tile 256, window 1)", SAVE_MEMORY_DECODE),
                           ("official fast (tile 512, window 2)", FAST_DECODE), ("untiled, window 4", untiled)]:
        video, seconds = timed_decode(vae, latent, settings)
        print(f"| {name} | {seconds:.2f} | {base / seconds:.2f}x | {(video - exact).abs().max().item():.2e} | "
              f"{psnr_uint8(to_uint8(video), to_uint8(exact)):.1f} |")


if __name__ == "__main__":
    main()
