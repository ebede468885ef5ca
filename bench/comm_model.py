"""The communication model of parallel sampling: bytes each rank moves per DiT call and per run, for CFG parallel
and Ulysses sequence parallel, at real 384p and 768p sizes of both variants, and the speed-up it predicts on 2, 4
and 8 GPUs for a given link bandwidth.

Per attention of a DiT call under sequence parallel S, each rank sends (S - 1) / S of its image queries, keys and
values and of the attention output (4 all-to-alls of [B, N/S, D]) and all-gathers the text output (its D/S
columns of Lt tokens to S - 1 ranks); the output head gathers N/S x 64 values once per call. CFG parallel
exchanges one [1, 16, 1, h, w] velocity per step. Element size: bf16 (2 bytes).

The time model: a DiT call costs its FLOPs (linear layers per token, attention over each frame's causal prefix)
at an effective GPU rate; a parallel call costs 1/S (and 1/2 with CFG parallel: batch 1 instead of 2) of that,
plus its bytes over the link bandwidth and a fixed latency per collective. The text encoders and the VAE decode
are outside the model (the official 2.2x on 4 A100s is end to end, decode included).

Run: .venv/bin/python -m bench.comm_model [--bandwidth-gbs 150] [--tflops 150] [--latency-us 20]
"""

import argparse
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import torch

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.history import call_tokens
from pyramid_flow.latents import LATENT_CHANNELS, SPATIAL_SCALE, latent_frames_for_seconds
from pyramid_flow.text.embeddings import TEXT_TOKENS

BYTES = 2  # bf16
OUTPUT_WIDTH = 64  # p * p * C of the output head, gathered once per call
STEPS_PER_STAGE = {"first": 20, "video": 10}  # the official defaults (3 stages each)
STAGES = 3
WORKFLOWS = [("384p 5 s", 384, 640, 5), ("768p 10 s", 768, 1280, 10)]
LAYOUTS = [("CFG 2", 1, True), ("SP 2", 2, False), ("SP 2 x CFG 2", 2, True), ("SP 4", 4, False),
           ("SP 4 x CFG 2", 4, True), ("SP 8", 8, False)]


@dataclass(frozen=True)
class DiTShape:
    """What the model needs of a real DiT: width, heads, attention calls per DiT call, linear weights per token."""

    width: int
    heads: int
    attentions: int
    weights_per_token: int


def dit_shape(variant: str) -> DiTShape:
    """From the released architecture (the class defaults are the released config.json values)."""
    dit = DIT_CLASSES[variant](device="meta")
    blocks = list(dit.transformer_blocks) + list(getattr(dit, "single_transformer_blocks", []))

    def linear_weights(block, streams: int) -> int:  # modulation layers act once per call, not per token
        return sum(p.numel() for name, p in block.named_parameters()
                   if p.dim() == 2 and not name.startswith("norm")) // streams

    per_token = sum(linear_weights(b, 1 if b in getattr(dit, "single_transformer_blocks", []) else 2) for b in blocks)
    return DiTShape(dit.proj_out.in_features, dit.attention_heads, len(blocks), per_token)


def calls(height: int, width: int, latent_frames: int) -> Iterator[Tuple[List[int], int]]:
    """(image tokens per frame, the stage's latent h*w) of every DiT call of a text-to-video run."""
    h, w = height // SPATIAL_SCALE, width // SPATIAL_SCALE
    for unit in range(latent_frames):
        steps = STEPS_PER_STAGE["first" if unit == 0 else "video"]
        for stage in range(STAGES):
            frames = call_tokens(height, width, unit, stage, STAGES)
            scale = 2 ** (STAGES - 1 - stage)
            for _ in range(steps):
                yield frames, (h // scale) * (w // scale)


def call_flops(shape: DiTShape, frames: List[int], batch: int) -> float:
    """Multiply-adds x 2 of one DiT call: linear layers on every token, attention of each frame over its prefix."""
    tokens = TEXT_TOKENS + sum(frames)
    linear = 2 * shape.weights_per_token * tokens
    prefix, attention = TEXT_TOKENS, 0
    for count in frames:
        prefix += count
        attention += 4 * count * prefix * shape.width  # QK^T and AV
    attention += 4 * TEXT_TOKENS * (TEXT_TOKENS + frames[0]) * shape.width
    return batch * (linear + attention * shape.attentions)


def call_traffic(shape: DiTShape, frames: List[int], latent_area: int, sp: int, cfg: bool, batch: int
                 ) -> Tuple[float, int]:
    """(bytes one rank sends, collectives) for one DiT call and its CFG exchange."""
    sent, collectives = 0.0, 0
    if sp > 1:
        share = sum(frames) / sp
        per_attention = 4 * share * shape.width * (sp - 1) / sp + TEXT_TOKENS * shape.width / sp * (sp - 1)
        sent += batch * BYTES * (per_attention * shape.attentions + share * OUTPUT_WIDTH * (sp - 1))
        collectives += 5 * shape.attentions + 1
    if cfg:
        sent += BYTES * LATENT_CHANNELS * latent_area
        collectives += 1
    return sent, collectives


def run_totals(variant: str, height: int, width: int, seconds: int, sp: int, cfg: bool, tflops: float,
               bandwidth_gbs: float, latency_us: float) -> Dict[str, float]:
    """Bytes per rank and predicted DiT time of a whole run, alone and on the layout."""
    shape = dit_shape(variant)
    batch = 1 if cfg else 2
    alone = parallel = sent = 0.0
    for frames, area in calls(height, width, latent_frames_for_seconds(seconds)):
        flops = call_flops(shape, frames, 2)
        alone += flops / (tflops * 1e12)
        call_bytes, collectives = call_traffic(shape, frames, area, sp, cfg, batch)
        sent += call_bytes
        parallel += flops * batch / 2 / sp / (tflops * 1e12) + call_bytes / (bandwidth_gbs * 1e9) \
            + collectives * latency_us * 1e-6
    return {"sent": sent, "alone": alone, "parallel": parallel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bandwidth-gbs", type=float, default=150.0,
                        help="per-GPU link bandwidth, GB/s (NVLink A100 ~150-250 effective, PCIe 4 ~20, IB ~25)")
    parser.add_argument("--tflops", type=float, default=150.0, help="effective bf16 TFLOP/s of one GPU")
    parser.add_argument("--latency-us", type=float, default=20.0, help="fixed cost of one collective, microseconds")
    args = parser.parse_args()
    print(f"Predicted from the communication model (bf16, {args.tflops:g} TFLOP/s per GPU, {args.bandwidth_gbs:g} "
          f"GB/s links, {args.latency_us:g} us per collective), DiT sampling only, official step counts.\n")
    print("| Variant | Workflow | Layout | GPUs | Sent per rank per run (GiB) | DiT time alone (s) | Parallel (s) | "
          "Speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for variant in ("miniflux", "sd3"):
        for label, height, width, seconds in WORKFLOWS:
            for name, sp, cfg in LAYOUTS:
                totals = run_totals(variant, height, width, seconds, sp, cfg, args.tflops, args.bandwidth_gbs,
                                    args.latency_us)
                gpus = sp * (2 if cfg else 1)
                print(f"| {variant} | {label} | {name} | {gpus} | {totals['sent'] / 2**30:.1f} | "
                      f"{totals['alone']:.0f} | {totals['parallel']:.0f} | {totals['alone'] / totals['parallel']:.2f}x |")


if __name__ == "__main__":
    main()
