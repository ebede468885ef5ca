"""Validate the memory model (pyramid_flow/memory.py) at real size.

--fake: the estimate against the peak that torch's MemTracker tracks on the full-size models under
FakeTensorMode (miniFLUX 1920 wide with 8 + 16 blocks, SD3 1536 wide with 24 blocks, the full VAE), for calls at
384p and 768p at several history lengths, batch 2, bf16 and fp32, and VAE decodes and encodes.

--cpu: the estimate against the peak RSS of real CPU runs at real width: each DiT with 2 blocks (the activation
peak is one block's, so depth does not change it), the full VAE on small frames (the peak scales with the pixels
of a tile). Each case runs in a fresh process with glibc returning every large block to the system, so RSS
follows the live tensors; the growth of the high-water mark over the RSS before the call is the measured peak.
Slow on 2 cores (about 5 minutes).

Run: .venv/bin/python -m bench.memory_check [--fake] [--cpu]
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.memory import dit_memory_estimate, vae_decode_memory, vae_encode_memory
from pyramid_flow.testing.memory_probe import dit_clip_shapes, tracked_dit_peak, tracked_vae_peak
from pyramid_flow.text.embeddings import TEXT_TOKENS
from pyramid_flow.vae import CausalVideoVAE

from .measure import proc_status_kib

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MIB = 2 ** 20
TWO_BLOCKS = {"miniflux": {"num_layers": 1, "num_single_layers": 1}, "sd3": {"num_layers": 2}}

# (label, height, width, past frames, history window): unit 1, a middle unit, the last unit of 5 s / 10 s, and
# the last unit of a 20 s 768p video with history_window 16.
DIT_CASES = [
    ("384p unit 0", 384, 640, 0, None), ("384p unit 1", 384, 640, 1, None), ("384p unit 8", 384, 640, 8, None),
    ("384p 5 s last", 384, 640, 15, None), ("768p unit 1", 768, 1280, 1, None), ("768p unit 15", 768, 1280, 15, None),
    ("768p 10 s last", 768, 1280, 30, None), ("768p 20 s last, window 16", 768, 1280, 60, 16),
]
# (label, decode, shape, window, tile): latent [B, 16, T, h, w] to decode or video [B, 3, F, H, W] to encode.
VAE_CASES = [
    ("decode 384p 5 s tile 256 w1", True, (1, 16, 16, 48, 80), 1, 256),
    ("decode 384p 5 s tile 512 w2", True, (1, 16, 16, 48, 80), 2, 512),
    ("decode 768p 10 s tile 256 w1", True, (1, 16, 31, 96, 160), 1, 256),
    ("decode 256x256 untiled w1", True, (1, 16, 4, 32, 32), 1, None),
    ("encode 384p 17 frames tile 256 w2", False, (1, 3, 17, 384, 640), 2, 256),
    ("encode 768p 17 frames tile 256 w1", False, (1, 3, 17, 768, 1280), 1, 256),
    ("encode 256x256 untiled w2", False, (1, 3, 17, 256, 256), 2, None),
]
CPU_DIT_CASES = [(variant, *case) for variant in ("miniflux", "sd3")
                 for case in ((384, 640, 15, "bf16"), (384, 640, 15, "fp32"), (768, 1280, 30, "bf16"))]
CPU_VAE_CASES = [("decode 128x256 tile 128 w1", True, (1, 16, 2, 16, 32), 1, 128, "bf16"),
                 ("decode 128x128 untiled w1", True, (1, 16, 2, 16, 16), 1, None, "bf16"),
                 ("decode 128x128 untiled w1", True, (1, 16, 2, 16, 16), 1, None, "fp32"),
                 ("encode 128x256 tile 128 w1", False, (1, 3, 9, 128, 256), 1, 128, "bf16")]


def vae_estimate(decode: bool, shape, window: int, tile: Optional[int], dtype: torch.dtype) -> int:
    estimate = vae_decode_memory if decode else vae_encode_memory
    return estimate(shape, window, tile, 0.25, dtype)


def row(label: str, estimate: int, *measured: int) -> str:
    cells = " | ".join(f"{m / MIB:9.0f} | {estimate / m:5.3f}" for m in measured)
    return f"| {label} | {estimate / MIB:9.0f} | {cells} |"


def fake_table() -> None:
    print("| DiT call (batch 2) | estimate MiB | tracked MiB | ratio |\n|---|---:|---:|---:|")
    for variant in ("miniflux", "sd3"):
        for name, dtype in DTYPES.items():
            for label, height, width, past, window in DIT_CASES:
                estimate = dit_memory_estimate(variant, {}, height, width, past, 2, dtype, window)
                tracked = tracked_dit_peak(variant, {}, height, width, past, 2, dtype, window)
                print(row(f"{variant} {name} {label}", estimate, tracked), flush=True)
    print("\n| VAE call | estimate MiB | tracked MiB | ratio |\n|---|---:|---:|---:|")
    for name, dtype in DTYPES.items():
        for label, decode, shape, window, tile in VAE_CASES:
            tracked = tracked_vae_peak(decode, shape, window, tile, 0.25, dtype)
            print(row(f"{label} {name}", vae_estimate(decode, shape, window, tile, dtype), tracked), flush=True)


def measured_peak(call) -> int:
    """Bytes the high-water mark of RSS grows by during ``call()``."""
    gc.collect()
    base = proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    call()
    return (proc_status_kib("VmHWM") - base) * 1024


def measure_dit(variant: str, height: int, width: int, past: int, dtype: torch.dtype) -> int:
    dit = DIT_CLASSES[variant](**TWO_BLOCKS[variant], dtype=dtype).eval()
    context_width = dit.context_embedder.in_features
    pooled_width = dit.time_text_embed.text_embedder.linear_1.in_features

    def call(h: int, w: int, frames: int):
        clips = [torch.randn(shape, dtype=dtype) for shape in dit_clip_shapes(h, w, frames, 2)]
        text = torch.randn(2, TEXT_TOKENS, context_width, dtype=dtype)
        args = (text, torch.ones(2, TEXT_TOKENS), torch.randn(2, pooled_width, dtype=dtype),
                torch.full((2,), 500.0, dtype=dtype))
        return lambda: dit(clips, *args)

    with torch.no_grad():
        call(128, 128, 1)()  # warm-up: kernels, thread pools
        return measured_peak(call(height, width, past))


def measure_vae(decode: bool, shape, window: int, tile: Optional[int], dtype: torch.dtype) -> int:
    vae = CausalVideoVAE(dtype=dtype).eval()
    run = vae.decode if decode else vae.encode
    small = (1, 16, 2, 2, 2) if decode else (1, 3, 9, 16, 16)
    with torch.no_grad():
        run(torch.randn(small, dtype=dtype), temporal_chunk=True, window_size=1)  # warm-up
        if decode:
            x = torch.randn(shape, dtype=dtype)
            return measured_peak(lambda: run(x, temporal_chunk=True, window_size=window, tile_sample_min_size=tile))
        # the encode's estimate counts its input video: create it inside the measured region
        return measured_peak(lambda: run(torch.randn(shape, dtype=dtype), temporal_chunk=True, window_size=window,
                                         tile_sample_min_size=tile))


def measure(case: Dict) -> int:
    torch.set_num_threads(2)
    if case["kind"] == "dit":
        return measure_dit(case["variant"], case["height"], case["width"], case["past"], DTYPES[case["dtype"]])
    return measure_vae(case["decode"], case["shape"], case["window"], case["tile"], DTYPES[case["dtype"]])


def in_fresh_process(case: Dict) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-m", "bench.memory_check", "--measure", json.dumps(case)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def cpu_table() -> None:
    print("| CPU run (batch 2, 2 blocks) | estimate MiB | tracked MiB | ratio | CPU peak RSS MiB | ratio | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, height, width, past, name in CPU_DIT_CASES:
        dtype, start = DTYPES[name], time.time()
        config = TWO_BLOCKS[variant]
        estimate = dit_memory_estimate(variant, config, height, width, past, 2, dtype)
        tracked = tracked_dit_peak(variant, config, height, width, past, 2, dtype)
        case = dict(kind="dit", variant=variant, height=height, width=width, past=past, dtype=name)
        label = f"{variant} {name} {height}p, {past} past frames"
        print(row(label, estimate, tracked, in_fresh_process(case)) + f" {time.time() - start:.0f} |", flush=True)
    for label, decode, shape, window, tile, name in CPU_VAE_CASES:
        dtype, start = DTYPES[name], time.time()
        estimate = vae_estimate(decode, shape, window, tile, dtype)
        tracked = tracked_vae_peak(decode, shape, window, tile, 0.25, dtype)
        case = dict(kind="vae", decode=decode, shape=shape, window=window, tile=tile, dtype=name)
        print(row(f"{label} {name}", estimate, tracked, in_fresh_process(case)) + f" {time.time() - start:.0f} |",
              flush=True)


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="estimate vs MemTracker on the fake full-size models")
    parser.add_argument("--cpu", action="store_true", help="estimate vs peak RSS of real CPU runs at real width")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(measure(json.loads(args.measure)))
        return
    if args.fake or not args.cpu:
        fake_table()
    if args.cpu:
        cpu_table()


if __name__ == "__main__":
    main(sys.argv[1:])
