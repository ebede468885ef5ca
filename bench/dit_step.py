"""Time and peak memory of one DiT step of generate() on CPU, early and late in a 384p run.

A small miniflux-shaped DiT (real head dim 64 and RoPE axes, fewer heads and layers) is called exactly as the
sampler calls it at stage 2 (full resolution, CFG batch 2): for unit 1 (one history frame) and for unit 15 (the
last unit of a 5 s video, the longest history). Each configuration runs in a fresh process so its peak RSS is
its own.

Run: PYTHONPATH=. .venv/bin/python bench/dit_step.py
"""

import json
import resource
import subprocess
import sys
import time

import torch

CONFIG = dict(num_attention_heads=4, num_layers=2, num_single_layers=4, joint_attention_dim=256, pooled_projection_dim=64)
WIDTH, HEIGHT = 640, 384


def measure(unit: int) -> dict:
    from pyramid_flow.dit import PyramidFluxDiT
    from pyramid_flow.sampler import history_clips

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    dit = PyramidFluxDiT(**CONFIG).eval()
    h, w = HEIGHT // 8, WIDTH // 8
    frames = [torch.randn(1, 16, 1, h, w, generator=generator) for _ in range(unit)]
    clips = [torch.cat([c] * 2) for c in history_clips(frames)[2]] + [torch.randn(2, 16, 1, h, w, generator=generator)]
    context = torch.randn(2, 128, CONFIG["joint_attention_dim"], generator=generator)
    mask = torch.ones(2, 128, dtype=torch.int64)
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
    return {"unit": unit, "tokens": tokens, "seconds": min(times), "peak_rss_mb": peak / 1024, "step_extra_mb": (peak - before) / 1024}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(measure(int(sys.argv[1]))))
        return
    print(f"| unit (384p, stage 2) | sequence length | time per DiT step | peak RSS | RSS added by the step |")
    print("|---|---|---|---|---|")
    for unit in (1, 15):
        out = subprocess.run([sys.executable, __file__, str(unit)], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {r['unit']} | {r['tokens']} | {r['seconds']:.2f} s | {r['peak_rss_mb']:.0f} MB | {r['step_extra_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
