"""Files in and out: H.264 mp4 (PyAV) or numbered PNGs for frames, safetensors for latents.

Frames are uint8 [F, H, W, 3]. Writers take one tensor or an iterable of frame chunks, so a decode can be written
out as it goes (bounded memory whatever the length). Every file is written under a temporary name in its folder
and renamed when complete (:func:`atomic_path`): a failure midway leaves the previous file, or none, never a
truncated one.
"""

import errno
import os
import shutil
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Tuple, Union

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .latents import FPS

Frames = Union[torch.Tensor, Iterable[torch.Tensor]]
LATENT_FORMAT = "pyramid_flow_latent"  # the metadata tag of a saved latent
LATENT_KEY = "latents"


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` (same folder and extension) to write to; renamed to ``path`` when the block
    ends, removed when it fails. A full disk becomes an error that names the file and the space left."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    partial = os.path.join(folder, f".{stem}.partial-{os.getpid()}{extension}")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as err:
        written = os.path.getsize(partial) if os.path.exists(partial) else 0
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            free = shutil.disk_usage(folder).free
            raise OSError(errno.ENOSPC, f"The disk is full while writing '{path}': {written / 2**20:.1f} MiB were "
                                        f"written and {free / 2**20:.1f} MiB are free there. Free some space (or "
                                        "choose another --output) and run again; no partial file was left.") from err
        raise


def _chunks(frames: Frames) -> Iterable[torch.Tensor]:
    return [frames] if isinstance(frames, torch.Tensor) else frames


def write_mp4(frames: Frames, path: str, fps: int = FPS, crf: int = 18) -> int:
    """uint8 frames -> an H.264 (yuv420p) mp4 at ``path``; returns the number of frames written."""
    import av  # optional dependency: only the CLI's mp4 files need it

    count = 0
    with atomic_path(path) as partial, av.open(partial, "w") as container:
        stream = None
        for chunk in _chunks(frames):
            for frame in chunk.cpu().numpy():
                if stream is None:
                    stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
                    stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                count += 1
        if stream is not None:
            container.mux(stream.encode())
    return count


def write_pngs(frames: Frames, folder: str, prefix: str = "frame") -> List[str]:
    """uint8 frames -> ``folder/prefix_00000.png`` ..."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for chunk in _chunks(frames):
        for frame in chunk.cpu().numpy():
            path = os.path.join(folder, f"{prefix}_{len(paths):05d}.png")
            with atomic_path(path) as partial:
                Image.fromarray(frame).save(partial, format="PNG")
            paths.append(path)
    return paths


def read_video(path: str) -> torch.Tensor:
    """Every frame of a video file as uint8 [F, H, W, 3]."""
    import av

    try:
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"'{path}' could not be read as a video ({err}).") from err
    if not frames:
        raise ValueError(f"'{path}' holds no video frames.")
    return torch.from_numpy(np.stack(frames))


def save_latents(path: str, latents: torch.Tensor, **metadata: str) -> str:
    """Normalised latents [B, 16, T, h, w] with string metadata (variant, seed, ...) -> a safetensors file."""
    with atomic_path(path) as partial:
        save_file({LATENT_KEY: latents.detach().float().contiguous().cpu()}, partial,
                  metadata={"format": LATENT_FORMAT, **{k: str(v) for k, v in metadata.items()}})
    return path


def load_latents(path: str) -> Tuple[torch.Tensor, Dict[str, str]]:
    """(normalised latents, metadata) of a file written by :func:`save_latents`."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != LATENT_FORMAT or LATENT_KEY not in f.keys():
                raise ValueError(f"'{path}' is not a Pyramid Flow latent file (written by --save-latent).")
            return f.get_tensor(LATENT_KEY), metadata
    except SafetensorError as err:
        raise ValueError(f"'{path}' is not a readable latent file ({err}): it is damaged or truncated. Use the "
                         "file --save-latent wrote, or the video itself (--extend video.mp4).") from err
