"""What ``history_window`` buys and costs, on CPU.

1. Flat cost: a small miniFLUX-shaped DiT (real head dim and RoPE axes, 4 heads, 2 double + 4 single blocks) at
   640x384, one step per stage, for 10 s and 30 s videos, with the whole history and with windows of 8 and 16:
   tokens of each unit's largest DiT call, seconds per unit at the end, and the peak RSS of the whole run (each
   configuration in a fresh process).
2. Fidelity cost: on the tiny golden checkpoints (official layout and structure, random weights), a 4 s video
   (temp 13) with the whole history and with windows 2, 4 and 8, from the same seed: per unit, the largest
   |latent difference| against the whole-history run, relative to the run's largest |latent|. This states what
   the window changes; it makes no quality claim (random weights have no quality).

Run: .venv/bin/python -m bench.history_window [--quick]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from pyramid_flow.dit import PyramidFluxDiT
from pyramid_flow.noise import SeededNoise
from pyramid_flow.history import max_sequence_length
from pyramid_flow.sampler import PyramidSampler
from pyramid_flow.text import TextEmbeddings

SMALL_DIT = dict(num_attention_heads=4, num_layers=2, num_single_layers=4, joint_attention_dim=256, pooled_projection_dim=64)


def text(dim: int, pooled: int, seed: int) -> TextEmbeddings:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 128, dtype=torch.int64)
    mask[:, :24] = 1
    return TextEmbeddings(torch.randn(1, 128, dim, generator=generator), mask, torch.randn(1, pooled, generator=generator))


def flat_cost_run(seconds: float, window) -> dict:
    """One configuration, in this process: per-unit tokens and times, and the peak RSS of the run."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dit = PyramidFluxDiT(**SMALL_DIT).eval()
    temp = 1 + round(seconds * 3)
    unit_times, last = [], [time.perf_counter()]

    def callback(info):
        if info.stage == 2 and info.step == info.steps_in_stage - 1:
            now = time.perf_counter()
            unit_times.append(now - last[0])
            last[0] = now

    sampler = PyramidSampler(dit, SeededNoise(0), torch.device("cpu"), torch.float32, callback=callback)
    cond, uncond = text(256, 64, 1), text(256, 64, 2)
    sampler.text_to_video(cond, uncond, height=384, width=640, latent_frames=temp, first_frame_steps=1, video_steps=1,
                          guidance_scale=7.0, video_guidance_scale=5.0, history_window=window)
    tokens = [max_sequence_length(384, 640, min(u, window or u)) for u in range(temp)]
    return {"tokens": tokens, "unit_seconds": unit_times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def fidelity(quick: bool) -> list:
    from pyramid_flow.pipeline import PyramidFlowPipeline
    from pyramid_flow.testing.golden import checkpoint_root, read_manifest

    rows = []
    for variant in ("miniflux", "sd3"):
        folder = read_manifest()["variants"][variant]["dit_folder"]
        pipe = PyramidFlowPipeline.from_pretrained(checkpoint_root(variant), folder)
        kwargs = dict(height=128, width=128, temp=7 if quick else 13, num_inference_steps=2, video_num_inference_steps=2,
                      seed=5, output_type="latent")
        full = pipe.generate("a red panda walking across a snowy log", **kwargs)
        scale = full.abs().max().item()
        for window in (2, 4, 8):
            windowed = pipe.generate("a red panda walking across a snowy log", history_window=window, **kwargs)
            per_unit = (windowed - full).abs().amax(dim=(0, 1, 3, 4)) / scale
            rows.append((variant, window, per_unit.tolist()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short videos only (a smoke test)")
    parser.add_argument("--run", nargs=2, metavar=("SECONDS", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(flat_cost_run(float(args.run[0]), int(args.run[1]) or None)))
        return
    torch.set_num_threads(2)
    lengths = (2.0, 4.0) if args.quick else (10.0, 30.0)
    print("| history | video | latent frames | tokens, first unit -> last unit | s per unit, last 5 | peak RSS |")
    print("|---|---|---|---|---|---|")
    for window in (0, 8, 16):
        for seconds in lengths:
            out = subprocess.run([sys.executable, "-m", "bench.history_window", "--run", str(seconds), str(window)],
                                 capture_output=True, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            tail = run["unit_seconds"][-5:]
            print(f"| {'whole' if not window else f'window {window}'} | {seconds:g} s | {len(run['tokens'])} | "
                  f"{run['tokens'][1]} -> {run['tokens'][-1]} | {sum(tail) / len(tail):.2f} s | {run['peak_rss_mb']:.0f} MB |")
    print()
    print("| variant | window | largest relative latent difference per unit (unit 0 ...) |")
    print("|---|---|---|")
    for variant, window, per_unit in fidelity(args.quick):
        print(f"| {variant} | {window} | " + " ".join(f"{d:.3f}" for d in per_unit) + " |")


if __name__ == "__main__":
    main()
