"""Writing frames to disk: H.264 mp4 through PyAV, or numbered PNGs."""

import os
from typing import List

import torch
from PIL import Image

from .latents import FPS


def write_mp4(frames: torch.Tensor, path: str, fps: int = FPS, crf: int = 18) -> str:
    """uint8 frames [F, H, W, 3] -> an H.264 (yuv420p) mp4 at ``path``."""
    import av  # optional dependency: only the CLI's mp4 output needs it

    frames = frames.cpu().numpy()
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_pngs(frames: torch.Tensor, folder: str, prefix: str = "frame") -> List[str]:
    """uint8 frames [F, H, W, 3] -> ``folder/prefix_00000.png`` ..."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames.cpu().numpy()):
        path = os.path.join(folder, f"{prefix}_{i:05d}.png")
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths
