"""One layout of parallel sampling, timed: run under torchrun by bench/multigpu.sh.

Every rank builds the DiT with random weights (full size on a GPU; the tiny test config with ``--tiny``), takes its
place from torchrun's environment (:func:`pyramid_flow.parallel.from_environment`), and runs the largest DiT call
of a video (the last unit's last stage, its whole history) ``--calls`` times after one warm-up, the way the sampler
does: its CFG half or both, its share of the tokens. Rank 0 appends one Markdown row to ``--out``: the layout, the
median time per call, and the peak memory of every rank.
"""

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.latents import LATENT_CHANNELS, SPATIAL_SCALE
from pyramid_flow.parallel import from_environment
from pyramid_flow.testing.tiny import TINY_DIT
from pyramid_flow.text.embeddings import TEXT_TOKENS

GIB = 2**30


def build_dit(variant: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights (N(0, 0.02)), the same on every rank."""
    config = TINY_DIT[variant] if tiny else {}
    with torch.device("meta"):
        dit = DIT_CLASSES[variant](**config, dtype=dtype)
    dit = dit.to_empty(device=device).eval()
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for tensor in dit.state_dict().values():
            tensor.normal_(0, 0.02, generator=generator)
    return dit


def call_inputs(dit, height: int, width: int, history: int, batch: int, device, dtype):
    """The last stage of a unit with ``history`` past frames at full size (the largest call a window allows)."""
    h, w = height // SPATIAL_SCALE, width // SPATIAL_SCALE
    text_dim, pooled_dim = dit.text_dims
    clips = [torch.randn(batch, LATENT_CHANNELS, history, h, w, device=device, dtype=dtype),
             torch.randn(batch, LATENT_CHANNELS, 1, h, w, device=device, dtype=dtype)]
    context = torch.randn(batch, TEXT_TOKENS, text_dim, device=device, dtype=dtype)
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.int64, device=device)
    pooled = torch.randn(batch, pooled_dim, device=device, dtype=dtype)
    return clips, context, mask, pooled, torch.full((batch,), 500.0, device=device, dtype=dtype)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="miniflux", choices=("miniflux", "sd3"))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--history", type=int, default=7, help="past frames in the call (a history window of 8)")
    p.add_argument("--sequence-parallel", type=int, default=1)
    p.add_argument("--cfg-parallel", action="store_true")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    context = from_environment(args.cfg_parallel, args.sequence_parallel)
    device = context.device if context is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit = build_dit(args.variant, args.tiny, device, dtype)
    batch = 1 if args.cfg_parallel else 2
    inputs = call_inputs(dit, args.height, args.width, args.history, batch, device, dtype)
    split = {} if context is None or context.sequence is None else {"sequence_split": context.sequence}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.no_grad():
        for call in range(args.calls + 1):
            if context is not None:
                dist.barrier()
            start = time.perf_counter()
            velocity = dit(*inputs, **split)
            if context is not None and context.splits_cfg:
                context.gather_halves(velocity)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if call:  # the first call warms up
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")
    peaks = [peak]
    if context is not None:
        peaks = [None] * context.world_size
        dist.all_gather_object(peaks, peak)
    if context is None or context.is_main:
        gpus = context.world_size if context is not None else 1
        layout = " x ".join(([f"SP {args.sequence_parallel}"] if args.sequence_parallel > 1 else [])
                            + (["CFG 2"] if args.cfg_parallel else [])) or "one process"
        memory = ", ".join("n/a" if value != value else f"{value:.1f}" for value in peaks)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(f"| {args.variant} | {layout} | {gpus} | {statistics.median(times) * 1000:.1f} | {memory} |\n")
    if context is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
