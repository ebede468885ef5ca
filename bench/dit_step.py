"""Time and peak memory of one DiT step of generate() on CPU, early and late in a 384p run, for the frame-prefix
attention (ours) and the official dense [B, 1, L, L] boolean mask.

A small miniflux-shaped DiT (real head dim 64 and RoPE axes, fewer heads and layers) is called exactly as the
sampler calls it at stage 2 (full resolution, CFG batch 2): for unit 1 (one history frame) and for unit 15 (the
last unit of a 5 s video, the longest history). Each configuration runs in a fresh process so its peak RSS is
its own.

Run: .venv/bin/python -m bench.dit_step
"""

import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CONFIG = dict(num_attention_heads=4, num_layers=2, num_single_layers=4, joint_attention_dim=256, pooled_projection_dim=64)
WIDTH, HEIGHT = 640, 384


def use_dense_mask() -> None:
    """Swap in the official attention: one SDPA call with a dense boolean mask built from the same segments."""
    from pyramid_flow.dit import layers

    def dense(q, k, v, mask):
        length = q.shape[2]
        query_end = torch.empty(length, dtype=torch.long)
        for start, end in mask.segments:
            query_end[start:end] = end
        allowed = torch.arange(length)[None, :] < query_end[:, None]  # [L, L] frame-causal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[None, None] & mask.key_mask)

    layers.masked_attention = dense


def measure(unit: int, dense: bool) -> dict:
    from pyramid_flow.dit import PyramidFluxDiT
    from pyramid_flow.history import history_clips
    from pyramid_flow.latents import PYRAMID_STAGES

    if dense:
        use_dense_mask()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    dit = PyramidFluxDiT(**CONFIG).eval()
    h, w = HEIGHT // 8, WIDTH // 8
    frames = torch.randn(1, 16, unit, h, w, generator=generator)
    clips = [torch.cat([c] * 2) for c in history_clips(frames, PYRAMID_STAGES)[-1]] + [torch.randn(2, 16, 1, h, w, generator=generator)]
    context = torch.randn(2, 128, CONFIG["joint_attention_dim"], generator=generator)
    mask = torch.zeros(2, 128, dtype=torch.int64)
    mask[:, :20] = 1
    pooled = torch.randn(2, CONFIG["pooled_projection_dim"], generator=generator)
    timestep = torch.full((2,), 500.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            dit(clips, context, mask, pooled, timestep)
            times.append(time.perf_counter() - start)
    tokens = sum(c.shape[2] * (c.shape[3] // 2) * (c.shape[4] // 2) for c in clips) + 128
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"tokens": tokens, "seconds": min(times), "step_extra_mb": (peak - before) / 1024}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(measure(int(sys.argv[1]), sys.argv[2] == "dense")))
        return
    print("| unit (384p, stage 2) | sequence length | dense mask (official) | frame-prefix (ours) | speed-up | memory added by the step: dense / ours |")
    print("|---|---|---|---|---|---|")
    for unit in (1, 15):
        runs = {}
        for mode in ("dense", "prefix"):
            out = subprocess.run([sys.executable, "-m", "bench.dit_step", str(unit), mode], capture_output=True, text=True,
                                 check=True).stdout
            runs[mode] = json.loads(out.strip().splitlines()[-1])
        d, p = runs["dense"], runs["prefix"]
        print(f"| {unit} | {p['tokens']} | {d['seconds']:.2f} s | {p['seconds']:.2f} s | {d['seconds'] / p['seconds']:.2f}x "
              f"| {d['step_extra_mb']:.0f} MB / {p['step_extra_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
