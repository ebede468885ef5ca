"""Writes are atomic: a failure midway (a full disk, an interrupt) leaves the previous file, or none, never a
truncated one; a full disk names the file and the space left."""

import errno
import os

import pytest
import torch

from pyramid_flow import video_io
from pyramid_flow.video_io import load_latents, save_latents, write_mp4, write_pngs


def frames(count: int, value: int = 0) -> torch.Tensor:
    return torch.full((count, 16, 16, 3), value, dtype=torch.uint8)


def failing_chunks(error: BaseException):
    """Frames that stop with ``error`` after a first chunk was written."""
    yield frames(4)
    raise error


def test_an_interrupted_mp4_leaves_the_previous_file(tmp_path):
    path = str(tmp_path / "video.mp4")
    assert write_mp4(frames(3, 200), path) == 3
    before = open(path, "rb").read()
    with pytest.raises(KeyboardInterrupt):
        write_mp4(failing_chunks(KeyboardInterrupt()), path)
    assert open(path, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["video.mp4"]


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    path = str(tmp_path / "video.mp4")
    with pytest.raises(OSError, match=r"(?s)disk is full while writing '.*video\.mp4': .* MiB are free") as err:
        write_mp4(failing_chunks(OSError(errno.ENOSPC, "No space left on device")), path)
    assert err.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []


def test_a_latent_write_that_fails_keeps_the_previous_latent(tmp_path, monkeypatch):
    path = str(tmp_path / "panda.safetensors")
    save_latents(path, torch.ones(1, 16, 2, 4, 4), variant="miniflux", seed=3)

    def full_disk(tensors, target, metadata=None):
        with open(target, "wb") as f:
            f.write(b"\0" * 100)  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video_io, "save_file", full_disk)
    with pytest.raises(OSError, match="disk is full while writing"):
        save_latents(path, torch.zeros(1, 16, 3, 4, 4), variant="miniflux", seed=3)
    latents, metadata = load_latents(path)
    assert latents.shape[2] == 2 and metadata["seed"] == "3"
    assert sorted(os.listdir(tmp_path)) == ["panda.safetensors"]


def test_png_frames_are_complete_files(tmp_path):
    paths = write_pngs(frames(3, 7), str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert sorted(os.listdir(tmp_path / "out")) == [os.path.basename(p) for p in paths]
