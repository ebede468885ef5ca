"""``python -m pyramid_flow``: a prompt (and optionally an image) in, an mp4 or PNG frames out."""

import argparse
import logging
import os
import sys
from typing import List, Optional

import torch
from PIL import Image

from . import latents as latent_utils
from .pipeline import DEFAULT_NEGATIVE_PROMPT, PyramidFlowPipeline
from .video_io import write_mp4, write_pngs

log = logging.getLogger("pyramid_flow")

PRESETS = {  # name: (width, height, DiT folder)
    "384p": (640, 384, "diffusion_transformer_384p"),
    "768p": (1280, 768, "diffusion_transformer_768p"),
    "image": (1024, 1024, "diffusion_transformer_image"),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_MODEL_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pyramid_flow")


def parse_steps(text: str) -> List[int]:
    steps = [int(s) for s in text.replace(" ", "").split(",")]
    return steps * 3 if len(steps) == 1 else steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyramid_flow", description=__doc__)
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--image", help="first frame for image-to-video (resized to the preset, aspect kept)")
    p.add_argument("--model", help="official checkpoint folder (rain1011/pyramid-flow-* layout)")
    p.add_argument("--variant", choices=("miniflux", "sd3"), default="miniflux", help="which repository to download")
    p.add_argument("--download", action="store_true", help="download the model from Hugging Face when missing")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random-weight model (noise output)")
    p.add_argument("--resolution", choices=sorted(PRESETS), default="384p")
    p.add_argument("--width", type=int, help="override the preset width (multiple of 64)")
    p.add_argument("--height", type=int, help="override the preset height (multiple of 64)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds at 24 fps (5 s = 16 latent frames)")
    p.add_argument("--temp", type=int, help="latent frames instead of --duration (frames = 8*temp-7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", choices=("default", "official"), default="default", help="'official' reproduces the official app's seeds")
    p.add_argument("--steps", type=parse_steps, default=[20, 20, 20], help="first-frame steps per stage, e.g. 20,20,20")
    p.add_argument("--video-steps", type=parse_steps, default=[10, 10, 10], help="later-frame steps per stage")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--video-guidance", type=float, default=5.0)
    p.add_argument("--negative", default=DEFAULT_NEGATIVE_PROMPT)
    p.add_argument("--dtype", choices=sorted(DTYPES), help="bf16 (GPU default) or fp32 (CPU default); fp16 is not supported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-save-memory", action="store_true", help="decode with 512 px tiles and window 2 (more VRAM)")
    p.add_argument("--no-offload", action="store_true", help="keep every model on the GPU (needs ~40 GB at 768p)")
    p.add_argument("--output", default="pyramid_flow.mp4", help="an .mp4 path, or a folder for PNG frames")
    return p


def resolve_model(args) -> tuple:
    """(checkpoint folder, is_tiny). Falls back to the tiny model when no weights can be had."""
    from .loading.hub import ensure_model
    from .tiny import build_tiny_checkpoint

    dit_folder = PRESETS[args.resolution][2]
    if not args.tiny:
        target = args.model or os.path.join(DEFAULT_MODEL_DIR, f"pyramid-flow-{args.variant}")
        try:
            return ensure_model(target, args.variant, dit_folder=dit_folder, allow_download=args.download), False
        except Exception as err:  # missing weights, no network: say why, then show the path on the tiny model
            if args.model:
                raise
            log.warning("No usable weights (%s).", err)
    folder = build_tiny_checkpoint(os.path.join(DEFAULT_MODEL_DIR, "tiny", args.variant), args.variant, dit_folder=dit_folder)
    log.warning("USING THE BUILT-IN TINY RANDOM-WEIGHT MODEL: the output is noise, not a real video.")
    return folder, True


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    width, height = args.width or PRESETS[args.resolution][0], args.height or PRESETS[args.resolution][1]
    latent_utils.check_resolution(width, height)
    temp = args.temp or latent_utils.temp_for_seconds(args.duration)
    if args.resolution == "image":
        temp = 1
    device = torch.device(args.device)
    folder, tiny = resolve_model(args)
    dtype = DTYPES[args.dtype] if args.dtype else None
    offload = False if args.no_offload else None  # None: on for CUDA
    pipe = PyramidFlowPipeline.from_pretrained(folder, dit_folder=PRESETS[args.resolution][2], device=device, dtype=dtype,
                                               offload=offload)
    progress = _progress_bar()
    common = dict(negative_prompt=args.negative, seed=args.seed, noise=args.noise, save_memory=not args.no_save_memory, callback=progress)
    if args.image:
        frames = pipe.generate_i2v(Image.open(args.image), args.prompt, temp=temp, num_inference_steps=args.video_steps,
                                   guidance_scale=args.guidance, video_guidance_scale=args.video_guidance,
                                   size=(width, height), **common)
    else:
        frames = pipe.generate(args.prompt, height, width, temp, args.steps, args.video_steps,
                               args.guidance, args.video_guidance, **common)
    output = write_mp4(frames, args.output) if args.output.endswith(".mp4") else write_pngs(frames, args.output)[0]
    label = " (tiny random-weight model: noise)" if tiny else ""
    log.info("Wrote %d frames of %dx%d to %s%s", frames.shape[0], width, height, args.output if args.output.endswith(".mp4") else os.path.dirname(output), label)
    return 0


def _progress_bar():
    from tqdm import tqdm

    bar = None

    def update(info):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=info.total, unit="step", file=sys.stderr)
        bar.set_postfix_str(f"frame {info.unit + 1}/{info.num_units} stage {info.stage + 1}")
        bar.update(1)
        if info.done == info.total:
            bar.close()

    return update
