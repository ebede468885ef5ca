"""Nothing lost: a run stopped at latent frame k by any fault continues from its finished frames and gives the
uninterrupted run's latents. Each fault is injected; each test states what survives and checks it."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyramid_flow import cli, sampler as sampler_module
from pyramid_flow.pipeline import PyramidFlowPipeline
from pyramid_flow.resume import StateMismatch
from pyramid_flow.testing.tiny import build_tiny_checkpoint
from pyramid_flow.video_io import load_latents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(height=64, width=128, num_inference_steps=1, video_num_inference_steps=[1, 1, 2], seed=11,
           output_type="latent")
EXACT = 1e-6  # the bound; the resumed run computes the same frames from the same inputs


class Stop(Exception):
    """The injected fault."""


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return PyramidFlowPipeline.from_pretrained(build_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")), "miniflux"))


def stop_at(unit: int):
    """A step callback that raises at the first step of ``unit``."""

    def callback(info):
        if info.unit == unit:
            raise Stop(f"stopped in latent frame {unit}")

    return callback


def frames_kept(folder) -> int:
    return len([name for name in os.listdir(folder) if name.startswith("frame_")])


@pytest.mark.parametrize("kind", ["t2v", "i2v", "extend", "window", "schedule"])
def test_a_run_stopped_at_frame_k_resumes_to_the_uninterrupted_result(pipe, tmp_path, kind):
    image = torch.rand(64, 128, 3)
    history = pipe.generate("a red fox", temp=2, **RUN)

    def run(**kwargs):
        if kind == "i2v":
            return pipe.generate_i2v(image, "a red fox", temp=5, num_inference_steps=[1, 1, 2], seed=11,
                                     output_type="latent", **kwargs)
        if kind == "extend":
            return pipe.extend(history, "a red fox", 3, num_inference_steps=[1, 1, 2], seed=11, **kwargs)
        extra = {"history_window": 2} if kind == "window" else {}
        if kind == "schedule":
            extra = {"prompt_schedule": "0: a red fox / 0.5: a blue fox"}
        return pipe.generate("a red fox", temp=5, **RUN, **extra, **kwargs)

    expected = run()
    state = str(tmp_path / "state")
    with pytest.raises(Stop):
        run(resume_dir=state, callback=stop_at(3))
    assert frames_kept(state) == (1 if kind == "extend" else 3)  # frames finished before the fault, nothing more
    resumed_steps = []
    resumed = run(resume_dir=state, callback=resumed_steps.append)
    assert resumed.shape == expected.shape
    assert (resumed - expected).abs().max().item() <= EXACT
    assert {info.unit for info in resumed_steps} == {3, 4}  # only the missing frames were sampled again


def test_a_state_of_another_request_is_refused_naming_the_field(pipe, tmp_path):
    state = str(tmp_path / "state")
    with pytest.raises(Stop):
        pipe.generate("a red fox", temp=4, resume_dir=state, callback=stop_at(2), **RUN)
    with pytest.raises(StateMismatch, match=r"belongs to another run \(seed: 11 -> 12\)"):
        pipe.generate("a red fox", temp=4, resume_dir=state, **{**RUN, "seed": 12})
    with pytest.raises(StateMismatch, match=r"text: .*a red fox.*a blue fox"):
        pipe.generate("a blue fox", temp=4, resume_dir=state, **RUN)


def test_a_damaged_or_edited_state_is_refused_never_loaded(pipe, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(Stop):
        pipe.generate("a red fox", temp=4, resume_dir=str(state), callback=stop_at(3), **RUN)
    frame = state / "frame_00001.safetensors"
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(StateMismatch, match="frame_00001.safetensors' is damaged"):
        pipe.generate("a red fox", temp=4, resume_dir=str(state), **RUN)
    frame.write_bytes((state / "frame_00002.safetensors").read_bytes())  # another frame's file put in its place
    with pytest.raises(StateMismatch, match="does not belong to this run"):
        pipe.generate("a red fox", temp=4, resume_dir=str(state), **RUN)
    identity = json.loads((state / "identity.json").read_text())
    (state / "identity.json").write_text(json.dumps({**identity, "format": "0"}))  # an older format
    with pytest.raises(StateMismatch, match="format: 0 -> 1"):
        pipe.generate("a red fox", temp=4, resume_dir=str(state), **RUN)
    (state / "identity.json").write_text("{not json")
    with pytest.raises(StateMismatch, match="identity.json' is damaged"):
        pipe.generate("a red fox", temp=4, resume_dir=str(state), **RUN)


def test_the_official_noise_keeps_no_state(pipe, tmp_path):
    state = tmp_path / "state"
    pipe.generate("a red fox", temp=2, resume_dir=str(state), noise="official", **RUN)
    assert not state.exists()


# --- the command line ------------------------------------------------------------------------------------------

TINY = ["a red panda", "--tiny", "--width", "128", "--height", "64", "--steps", "1", "--video-steps", "1", "--seed", "5"]


def cli_env(home) -> dict:
    return dict(os.environ, HOME=str(home), PYTHONPATH=ROOT)


def test_the_cli_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL in latent frame 5 of 9: the same command again finishes, and equals one uninterrupted run."""
    args = [*TINY, "--latent-frames", "9", "--output", "killed.mp4", "--save-latent", "killed.safetensors"]
    process = subprocess.Popen([sys.executable, "-m", "pyramid_flow", *args], stderr=subprocess.PIPE, text=True,
                               env=cli_env(tmp_path), cwd=tmp_path)
    seen, deadline = "", time.monotonic() + 300
    while "frame 6/9" not in seen and time.monotonic() < deadline:
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert frames_kept(tmp_path / "killed.mp4.resume") >= 5
    again = subprocess.run([sys.executable, "-m", "pyramid_flow", *args], capture_output=True, text=True,
                           env=cli_env(tmp_path), cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after latent frame" in again.stderr
    reference = subprocess.run([sys.executable, "-m", "pyramid_flow", *TINY, "--latent-frames", "9", "--output",
                                "whole.mp4", "--save-latent", "whole.safetensors"], capture_output=True, text=True,
                               env=cli_env(tmp_path), cwd=tmp_path, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    resumed, whole = load_latents(str(tmp_path / "killed.safetensors"))[0], load_latents(str(tmp_path / "whole.safetensors"))[0]
    assert (resumed - whole).abs().max().item() <= EXACT
    assert not (tmp_path / "killed.mp4.resume").exists()  # removed on success


def test_out_of_memory_in_frame_k_keeps_the_frames_and_a_retry_with_a_window_continues(tmp_path, monkeypatch, caplog):
    original = sampler_module._Run.generate_unit

    def out_of_memory_in_frame_3(self, unit, *args, **kwargs):
        if unit == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, unit, *args, **kwargs)

    monkeypatch.setattr(sampler_module._Run, "generate_unit", out_of_memory_in_frame_3)
    caplog.set_level(logging.INFO, logger="pyramid_flow")
    args = [*TINY, "--latent-frames", "6", "--output", str(tmp_path / "v.mp4")]
    assert cli.main(args) == cli.EXIT_OUT_OF_MEMORY
    assert "out of memory" in caplog.text and "--history-window 16" in caplog.text
    assert "3 finished latent frames are kept" in caplog.text
    monkeypatch.setattr(sampler_module._Run, "generate_unit", original)
    caplog.clear()
    assert cli.main([*args, "--history-window", "2"]) == 0  # the window may change between a run and its retry
    assert "resuming after latent frame 3 of 6" in caplog.text and (tmp_path / "v.mp4").is_file()


def test_a_full_disk_while_writing_keeps_every_frame_so_only_the_write_is_redone(tmp_path, monkeypatch, caplog):
    original = PyramidFlowPipeline.iter_frames

    def disk_full(self, latents, *args, **kwargs):
        yield from original(self, latents[:, :, :1], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PyramidFlowPipeline, "iter_frames", disk_full)
    args = [*TINY, "--latent-frames", "4", "--output", str(tmp_path / "v.mp4")]
    assert cli.main(args) == cli.EXIT_USER_ERROR
    assert "disk is full while writing" in caplog.text and str(tmp_path / "v.mp4") in caplog.text
    assert not (tmp_path / "v.mp4").exists() and frames_kept(tmp_path / "v.mp4.resume") == 4
    monkeypatch.setattr(PyramidFlowPipeline, "iter_frames", original)
    steps = []
    monkeypatch.setattr(cli.ProgressBar, "step", lambda self, info: steps.append(info))
    assert cli.main(args) == 0 and (tmp_path / "v.mp4").is_file()
    assert steps == []  # every frame was kept: nothing was sampled again


def test_ctrl_c_keeps_the_finished_frames(tmp_path, monkeypatch, caplog):
    original = sampler_module._Run.generate_unit

    def interrupted_in_frame_2(self, unit, *args, **kwargs):
        if unit == 2:
            raise KeyboardInterrupt
        return original(self, unit, *args, **kwargs)

    monkeypatch.setattr(sampler_module._Run, "generate_unit", interrupted_in_frame_2)
    assert cli.main([*TINY, "--latent-frames", "4", "--output", str(tmp_path / "v.mp4")]) == cli.EXIT_INTERRUPTED
    assert "2 finished latent frames are kept" in caplog.text


def test_resume_without_a_stopped_run_and_restart(tmp_path, caplog):
    args = [*TINY, "--latent-frames", "2", "--output", str(tmp_path / "v.mp4")]
    assert cli.main([*args, "--resume"]) == cli.EXIT_USER_ERROR
    assert "--resume: there is no stopped run to continue" in caplog.text
    assert cli.main([*args, "--keep-state"]) == 0 and frames_kept(tmp_path / "v.mp4.resume") == 2
    assert cli.main([*args, "--restart"]) == 0 and not (tmp_path / "v.mp4.resume").exists()
