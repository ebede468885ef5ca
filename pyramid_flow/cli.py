"""``python -m pyramid_flow``: a prompt (and optionally a first image or a video to continue) in, an mp4 or PNG
frames out, and optionally the latent (to extend later)."""

import argparse
import json
import logging
import os
import shutil
import sys
from typing import List, Optional, Tuple

import torch
from PIL import Image

from . import latents as latent_utils
from .dtypes import COMPUTE_DTYPES
from .loading.hub import ensure_model
from .ops import bound_onednn_caches
from .parallel import (DEFAULT_TIMEOUT_S, ParallelContext, check_same_arguments, from_environment,
                       launched_by_torchrun, main_rank_first, shutdown)
from .pipeline import PyramidFlowPipeline
from .placement import OUT_OF_MEMORY
from .resume import IDENTITY_FILE, kept_frames
from .testing.tiny import build_tiny_checkpoint
from .text import DEFAULT_NEGATIVE_PROMPT
from .vae import FAST_DECODE, SAVE_MEMORY_DECODE
from .video_io import load_latents, read_video, save_latents, write_mp4, write_pngs

log = logging.getLogger("pyramid_flow")

PRESETS = {  # name: (width, height, DiT folder)
    "384p": (640, 384, "diffusion_transformer_384p"),
    "768p": (1280, 768, "diffusion_transformer_768p"),
    "image": (1024, 1024, "diffusion_transformer_image"),
}
DEFAULT_MODEL_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pyramid_flow")


def parse_steps(text: str) -> List[int]:
    """'20' or '20,20,20' -> steps per pyramid stage; anything else is an argparse error that says the form."""
    try:
        steps = [int(s) for s in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a step count: give one number or three separated by "
                                         "commas, e.g. 20 or 20,20,20") from None
    steps = steps * 3 if len(steps) == 1 else steps
    if len(steps) != 3 or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': give 3 positive step counts (one per pyramid stage) or one")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyramid_flow", description=__doc__)
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--image", help="first frame for image-to-video (resized to the preset, aspect kept)")
    p.add_argument("--extend", metavar="VIDEO_OR_LATENT",
                   help="continue a video: an mp4 (encoded with the VAE) or a .safetensors written by --save-latent "
                        "(exact); --duration then counts the seconds to add")
    p.add_argument("--model", help="official checkpoint folder (rain1011/pyramid-flow-* layout)")
    p.add_argument("--dit", metavar="FILE_OR_FOLDER",
                   help="DiT weights that replace the model folder's (a fine-tune: a checkpoint-N folder or a file of "
                        "the official training scripts); the model folder's config.json describes the architecture")
    p.add_argument("--vae", metavar="FILE", help="VAE weights that replace the model folder's (e.g. a "
                                                 "train_video_vae.py checkpoint)")
    p.add_argument("--ema", action="store_true", help="load the EMA weights of a --dit training checkpoint folder")
    p.add_argument("--variant", choices=("miniflux", "sd3"), default="miniflux", help="which repository to download")
    p.add_argument("--download", action="store_true", help="download the model from Hugging Face when missing")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random-weight model (noise output)")
    p.add_argument("--resolution", choices=sorted(PRESETS), default="384p")
    p.add_argument("--width", type=int, help="override the preset width (multiple of 64)")
    p.add_argument("--height", type=int, help="override the preset height (multiple of 64)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds at 24 fps (5 s = 16 latent frames)")
    p.add_argument("--latent-frames", "--temp", type=int, dest="latent_frames", metavar="N",
                   help="length in latent frames instead of --duration (video frames = 8N - 7; --temp is the official "
                        "name); with --extend, the latent frames to add")
    p.add_argument("--seed", type=int, help="default 0, or the seed stored in an --extend latent file")
    p.add_argument("--noise", choices=("default", "official"), default="default",
                   help="'official' reproduces the official app's seeds (extending then draws a new stream)")
    p.add_argument("--steps", type=parse_steps, default=[20, 20, 20], help="first-frame steps per stage, e.g. 20,20,20")
    p.add_argument("--video-steps", type=parse_steps, default=[10, 10, 10], help="later-frame steps per stage")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--video-guidance", type=float, default=5.0)
    p.add_argument("--negative", default=DEFAULT_NEGATIVE_PROMPT)
    p.add_argument("--history-window", type=int, metavar="K",
                   help="keep the first and the K-1 newest past frames in every DiT call: flat memory for any length")
    p.add_argument("--prompt-schedule", metavar="FILE_OR_TEXT",
                   help="prompt travel, e.g. '0: a red panda on a log / 4: the panda jumps into the snow' "
                        "(seconds: prompt); replaces the prompt")
    p.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), help="bf16 (GPU default) or fp32 (CPU default); fp16 is not supported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-save-memory", action="store_true", help="decode with 512 px tiles and window 2 (more VRAM)")
    p.add_argument("--no-offload", action="store_true", help="keep every model on the GPU (needs ~40 GB at 768p)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT blocks (inductor; the first run compiles, which takes minutes)")
    p.add_argument("--save-latent", metavar="PATH", help="also write the final latent (.safetensors) to extend later")
    p.add_argument("--work-dir", metavar="DIR",
                   help="where the run keeps each finished latent frame, so that after any fault the same command "
                        "continues from them (default: OUTPUT.resume beside --output; removed on success)")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run (the same command does it by itself); an error if there is none")
    p.add_argument("--restart", action="store_true", help="discard a stopped run's frames and start over")
    p.add_argument("--keep-state", action="store_true", help="keep the finished frames after success")
    p.add_argument("--cfg-parallel", action="store_true",
                   help="under torchrun: the negative and positive halves of every guided step on two ranks (GPUs, "
                        "or CPU processes with gloo), 2 processes (2 x S with --sequence-parallel S); rank 0 writes")
    p.add_argument("--sequence-parallel", type=int, default=1, metavar="S",
                   help="under torchrun: the image tokens of every DiT call shared by S ranks (Ulysses); S must divide "
                        "the DiT's attention heads (miniFLUX 30, SD3 24); with --cfg-parallel, 2 x S processes")
    p.add_argument("--dist-backend", choices=("nccl", "gloo"), help="default: nccl when every rank has a GPU, else gloo")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="how long a rank waits for the others at one step before the run stops with an error")
    p.add_argument("--output", default="pyramid_flow.mp4", help="an .mp4 path, or a folder for PNG frames")
    return p


def resolve_model(args) -> Tuple[str, bool]:
    """(checkpoint folder, is_tiny). The tiny model stands in only when no model folder exists at all and no
    download was asked for; a folder that exists but is incomplete or broken is an error that names the file."""
    dit_folder = PRESETS[args.resolution][2]
    target = args.model or os.path.join(DEFAULT_MODEL_DIR, f"pyramid-flow-{args.variant}")
    if not args.tiny and (args.model or args.download or os.path.isdir(target)):
        return ensure_model(target, args.variant, dit_folder=dit_folder, allow_download=args.download), False
    if not args.tiny:
        log.warning("No model folder at %s (pass --model DIR, or --download to fetch %s).", target, args.variant)
    folder = build_tiny_checkpoint(os.path.join(DEFAULT_MODEL_DIR, "tiny", args.variant), args.variant, dit_folder=dit_folder)
    log.warning("USING THE BUILT-IN TINY RANDOM-WEIGHT MODEL: the output is noise, not a real video.")
    return folder, True


def load_history(path: str, pipe: PyramidFlowPipeline, width: int, height: int, callback) -> Tuple[torch.Tensor, dict]:
    """The video to continue as normalised latents, and the metadata of a latent file."""
    if path.endswith(".safetensors"):
        latents, metadata = load_latents(path)
        if metadata.get("variant", pipe.variant.name) != pipe.variant.name:
            raise ValueError(f"'{path}' was made with the {metadata['variant']} model; this run loaded "
                             f"{pipe.variant.name}. Pass --variant {metadata['variant']} (or its --model folder).")
        return latents, metadata
    return pipe.frames_to_history(read_video(path), size=(width, height), callback=callback), {}


def check_arguments(args) -> None:
    """Numbers no run can use, refused before anything loads."""
    if args.latent_frames is not None and args.latent_frames < 1:
        raise ValueError(f"--latent-frames {args.latent_frames}: a video needs at least 1 latent frame.")
    if args.latent_frames is None and not args.duration >= 0:
        raise ValueError(f"--duration {args.duration}: give a length in seconds, 0 or more (0 makes one image).")
    if args.extend and args.latent_frames is None and not args.duration > 0:
        raise ValueError(f"--duration {args.duration}: with --extend, give the seconds to add (more than 0).")
    for name in ("image", "extend"):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"--{name} '{path}' does not exist (or is not a file).")
    check_output(args.output)


def check_output(output: str) -> None:
    """Refuse an output that cannot be written before the run, not after an hour of sampling."""
    target = os.path.abspath(output)
    folder = os.path.dirname(target) if output.endswith(".mp4") else target
    if output.endswith(".mp4") and os.path.isdir(target):
        raise IsADirectoryError(f"--output '{output}' is a folder; give a file name ending in .mp4, or a folder "
                                "without .mp4 for PNG frames.")
    if output.endswith(".mp4") and not os.path.isdir(folder):
        raise FileNotFoundError(f"--output '{output}': the folder '{folder}' does not exist; create it first.")
    existing = folder
    while not os.path.isdir(existing):
        if os.path.exists(existing):
            raise NotADirectoryError(f"--output '{output}': '{existing}' is a file, not a folder.")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"--output '{output}': '{existing}' is not writable; choose another --output.")


def read_schedule(value: Optional[str]) -> Optional[str]:
    if value is None or not os.path.isfile(value):
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


EXIT_USER_ERROR, EXIT_OUT_OF_MEMORY, EXIT_INTERRUPTED = 2, 3, 130


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: :func:`run`, with the errors a user can fix printed as one line naming the problem and the
    fix (exit 2; 3 for out of memory; 130 for Ctrl-C) instead of a traceback."""
    rank = f"[rank {os.environ['RANK']}] " if launched_by_torchrun() else ""
    quiet = launched_by_torchrun() and os.environ["RANK"] != "0"  # rank 0 alone reports progress
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=rank + "%(message)s")
    try:
        return run(argv)
    except KeyboardInterrupt:
        log.error("pyramid_flow: interrupted.")
        return EXIT_INTERRUPTED
    except OUT_OF_MEMORY as err:
        log.error("pyramid_flow: out of memory (%s). Bound the history (--history-window 16), make a shorter or "
                  "smaller video, keep offloading on (no --no-offload), or use --dtype bf16.", str(err).splitlines()[0])
        return EXIT_OUT_OF_MEMORY
    except (ValueError, OSError) as err:  # bad input: sizes, files, formats, paths (CheckpointError is a ValueError)
        log.error("pyramid_flow: error: %s", err)
        return EXIT_USER_ERROR


def run(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and make the video; raises on any error, after saying which finished frames are kept."""
    bound_onednn_caches()
    args = build_parser().parse_args(argv)
    check_arguments(args)
    context = from_environment(args.cfg_parallel, args.sequence_parallel, args.dist_backend, args.dist_timeout,
                               args.device)
    try:
        if context is not None:
            check_same_arguments(context, json.dumps(sys.argv[1:] if argv is None else list(argv)))
            args.device = str(context.device)
        return make_resumable_video(args, context)
    finally:
        shutdown(context)


def make_resumable_video(args, context: Optional[ParallelContext]) -> int:
    work_dir = args.work_dir or default_work_dir(args.output)
    if args.restart:
        shutil.rmtree(work_dir, ignore_errors=True)
    elif args.resume and not os.path.isfile(os.path.join(work_dir, IDENTITY_FILE)):
        raise FileNotFoundError(f"--resume: there is no stopped run to continue in '{work_dir}' (give its --output "
                                "or --work-dir).")
    try:
        make_video(args, work_dir, context)
    except BaseException:
        report_kept_frames(work_dir)
        raise
    if not args.keep_state:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def default_work_dir(output: str) -> str:
    """Where a run keeps its finished frames unless --work-dir says: beside the output."""
    return os.path.abspath(output).rstrip(os.sep) + ".resume"


def report_kept_frames(work_dir: str) -> None:
    kept = kept_frames(work_dir)
    if kept:
        log.error("pyramid_flow: %d finished latent frames are kept in %s: run the same command again to continue "
                  "from them (add --history-window 16 after an out-of-memory error; --restart starts over).",
                  kept, work_dir)


def make_video(args, work_dir: str, context: Optional[ParallelContext] = None) -> None:
    width, height = args.width or PRESETS[args.resolution][0], args.height or PRESETS[args.resolution][1]
    latent_utils.check_resolution(width, height)
    latent_frames = 1 if args.resolution == "image" else (args.latent_frames
                                                          or latent_utils.latent_frames_for_seconds(args.duration))
    with main_rank_first(context):  # a download or the tiny model's files: one writer
        folder, tiny = resolve_model(args)
    dtype = COMPUTE_DTYPES[args.dtype] if args.dtype else None
    offload = False if args.no_offload else None  # None: on for CUDA
    pipe = PyramidFlowPipeline.from_pretrained(folder, dit_folder=PRESETS[args.resolution][2], device=torch.device(args.device),
                                               dtype=dtype, offload=offload, compile_options={} if args.compile else None,
                                               dit_path=args.dit, vae_path=args.vae, ema=args.ema, parallel=context)
    schedule = read_schedule(args.prompt_schedule)
    main_rank = context is None or context.is_main
    common = dict(negative_prompt=args.negative, noise=args.noise, callback=ProgressBar("sampling", main_rank).step,
                  history_window=args.history_window, prompt_schedule=schedule, resume_dir=work_dir)
    if args.extend:
        history, metadata = load_history(args.extend, pipe, width, height, ProgressBar("encoding", main_rank).piece)
        seed = args.seed if args.seed is not None else int(metadata.get("seed", 0))
        if args.noise == "official":
            log.info("Extending with noise=official draws a new sequential stream: not the frames one longer run "
                     "would give (the default noise is keyed per frame and would).")
        added = args.latent_frames or latent_utils.latent_frames_to_add(args.duration)
        latents = pipe.extend(history, args.prompt, added, num_inference_steps=args.video_steps,
                              guidance_scale=args.guidance, video_guidance_scale=args.video_guidance, seed=seed, **common)
    elif args.image:
        seed = args.seed or 0
        latents = pipe.generate_i2v(Image.open(args.image), args.prompt, temp=latent_frames,
                                    num_inference_steps=args.video_steps,
                                    guidance_scale=args.guidance, video_guidance_scale=args.video_guidance, seed=seed,
                                    size=(width, height), output_type="latent", decode_callback=ProgressBar("encoding", main_rank).piece,
                                    **common)
    else:
        seed = args.seed or 0
        latents = pipe.generate(args.prompt, height, width, latent_frames, args.steps, args.video_steps, args.guidance,
                                args.video_guidance, seed=seed, output_type="latent", **common)
    settings = FAST_DECODE if args.no_save_memory else SAVE_MEMORY_DECODE
    frames = pipe.iter_frames(latents, settings, callback=ProgressBar("decoding", main_rank).piece)
    if not main_rank:  # every rank holds the same latents and decodes its share of the tiles; rank 0 writes
        for _ in frames:
            pass
        return
    if args.save_latent:
        save_latents(args.save_latent, latents, variant=pipe.variant.name, seed=seed)
        log.info("Wrote the latent (%d latent frames) to %s", latents.shape[2], args.save_latent)
    if args.output.endswith(".mp4"):
        count, where = write_mp4(frames, args.output), args.output
    else:
        count, where = len(write_pngs(frames, args.output)), args.output
    label = " (tiny random-weight model: noise)" if tiny else ""
    h, w = latent_utils.pixel_size(latents)
    log.info("Wrote %d frames of %dx%d to %s%s", count, w, h, where, label)


class ProgressBar:
    """A tqdm bar on stderr for one phase; it opens on the first update of a run and closes when it is done."""

    def __init__(self, what: str, shown: bool = True):
        self.what, self.bar, self.shown = what, None, shown  # shown: False on the ranks other than 0

    def update(self, done: int, total: int, note: Optional[str] = None) -> None:
        from tqdm import tqdm

        if not self.shown:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.what, file=sys.stderr)
        if note:
            self.bar.set_postfix_str(note)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()
            self.bar = None

    def step(self, info) -> None:
        """The sampler's callback (a StepInfo after every DiT step)."""
        self.update(info.done, info.total, f"frame {info.unit + 1}/{info.latent_frames} stage {info.stage + 1}")

    def piece(self, done: int, total: int) -> None:
        """A VAE callback (after every encoded or decoded piece)."""
        self.update(done, total)
