"""How far fp8 weight storage moves a video, against bf16 and against the fp32 golden output of the official code.

For every text-to-video and image-to-video case of the golden manifest, the same call (official noise replayed)
runs three times: fp32 (the golden reference), bf16, and bf16 with the DiT's Linear weights stored in fp8
(e4m3fn and e5m2; a round trip through fp8 is exactly what fp8 storage with bf16 compute multiplies by, the
"fp8" weight dtypes of the loader node). Reported per case: the RMS of the final-latent difference relative to
the latents' RMS, and the PSNR of the decoded uint8 frames against the fp32 run.

The golden checkpoints are tiny random-weight models, so the numbers show the size of the effect, not the visual
quality of the released checkpoints.

Run: .venv/bin/python -m bench.fp8_drift [--out docs/fp8_drift.md]
"""

import argparse
import copy
import json
from typing import Dict, List, Optional

import torch
from PIL import Image

from pyramid_flow import latents as latent_utils
from pyramid_flow.dit.loading import target_dtype
from pyramid_flow.dtypes import FP8_DTYPES
from pyramid_flow.pipeline import PyramidFlowPipeline
from pyramid_flow.testing.golden import case_file, checkpoint_root, read_manifest, replay_noise, tensors

from .measure import psnr_uint8


def fp8_round_trip(pipe: PyramidFlowPipeline, fp8: torch.dtype) -> PyramidFlowPipeline:
    """A copy of a bf16 pipeline whose DiT Linear weights went through ``fp8`` storage (what the loader stores)."""
    stored = copy.copy(pipe)
    stored.dit = copy.deepcopy(pipe.dit)
    with torch.no_grad():
        for name, param in stored.dit.named_parameters():
            if target_dtype(name, param, fp8) == fp8:
                param.copy_(param.to(fp8).to(param.dtype))
    return stored


def run_case(pipe: PyramidFlowPipeline, case: dict, recorded: dict) -> Dict[str, torch.Tensor]:
    kwargs = dict(case["kwargs"], noise=replay_noise(case, recorded), output_type="latent")
    if "input_image" in kwargs:
        kwargs["input_image"] = Image.open(case_file(case["image_png"])).convert("RGB")
        latents = pipe.generate_i2v(**kwargs)
    else:
        latents = pipe.generate(**kwargs)
    video = pipe.vae.decode(latent_utils.denormalize(latents, pipe.variant).to(pipe.dtype), **case["vae_decode_call"]["kwargs"])
    return {"latents": latents.float(), "frames": latent_utils.to_uint8(video.float())}


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def measure() -> List[dict]:
    rows = []
    for case in read_manifest()["cases"]:
        if case["name"].split("/")[-1] not in ("t2v", "i2v"):
            continue
        recorded = tensors(case["file"])
        folder = read_manifest()["variants"][case["variant"]]["dit_folder"]
        runs, pipes = {}, {}
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            pipes[label] = PyramidFlowPipeline.from_pretrained(checkpoint_root(case["variant"]), dit_folder=folder,
                                                               dtype=dtype)
            runs[label] = run_case(pipes[label], case, recorded)
        for name, fp8 in FP8_DTYPES.items():
            runs[name] = run_case(fp8_round_trip(pipes["bf16"], fp8), case, recorded)
        reference, bf16 = runs["fp32"], runs["bf16"]
        for label, run in runs.items():
            if label == "fp32":
                continue
            rows.append({"case": case["name"], "weights": label,
                         "latent_vs_fp32": relative_rms(run["latents"], reference["latents"]),
                         "latent_vs_bf16": relative_rms(run["latents"], bf16["latents"]),
                         "psnr_vs_fp32": psnr_uint8(run["frames"], reference["frames"])})
        print(json.dumps(rows[-len(runs) + 1:]), flush=True)
    return rows


def markdown(rows: List[dict]) -> str:
    lines = ["| Case | Weights (bf16 compute) | Latent RMS diff vs fp32 | vs bf16 | Frames PSNR vs fp32 (dB) |",
             "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['weights']} | {row['latent_vs_fp32']:.2%} | {row['latent_vs_bf16']:.2%} | "
                     f"{row['psnr_vs_fp32']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    table = markdown(measure())
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    main()
