"""The command line as a user runs it: a subprocess, its exit code and the one line it prints, for every mistake a
user can make, each refused before any model loads where it can be."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyramid_flow.video_io import save_latents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--width", "128", "--height", "64", "--steps", "1", "--video-steps", "1"]


def run_cli(tmp_path, *args, timeout=300):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=ROOT)  # the tiny model's cache goes under this HOME
    return subprocess.run([sys.executable, "-m", "pyramid_flow", "a red panda", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert lines, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[-1]


@pytest.mark.parametrize("args,code,message", [
    (["--image", "missing.png"], 2, "--image 'missing.png' does not exist"),
    (["--extend", "missing.safetensors"], 2, "--extend 'missing.safetensors' does not exist"),
    (["--steps", "20,x"], 2, r"'20,x' is not a step count"),
    (["--steps", "20,20"], 2, "give 3 positive step counts"),
    (["--temp", "0"], 2, "needs at least 1 latent frame"),
    (["--duration", "-2"], 2, "--duration -2.0: give a length in seconds, 0 or more"),
    (["--output", "no/such/folder/x.mp4"], 2, "the folder '.*no/such/folder' does not exist"),
    (["--width", "100"], 2, "width 100 is not a multiple of 64"),
])
def test_bad_arguments_exit_with_a_message_before_loading(tmp_path, args, code, message):
    import re

    length = [] if {"--temp", "--duration"} & set(args) else ["--temp", "1"]
    result = run_cli(tmp_path, *TINY, *length, *args)
    assert result.returncode == code, result.stderr[-2000:]
    assert re.search(message, error_line(result)), error_line(result)
    assert not (tmp_path / ".cache").exists() or "--width" in args  # refused before the tiny model was even built


def test_an_unwritable_output_is_refused_before_the_run(tmp_path, monkeypatch, caplog):
    """Root may write anywhere, so the folder's permission is stood in for (os.access) to test it as any user."""
    from pyramid_flow import cli

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    assert cli.main(["a red panda", *TINY, "--temp", "1", "--output", str(locked / "clip.mp4")]) == 2
    assert f"'{locked}' is not writable; choose another --output" in caplog.text
    assert not (tmp_path / ".cache").exists()


def test_damaged_inputs_name_the_file(tmp_path):
    (tmp_path / "not_an_image.png").write_text("hello")
    result = run_cli(tmp_path, *TINY, "--temp", "2", "--image", "not_an_image.png")
    assert result.returncode == 2 and "not_an_image.png" in error_line(result)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    result = run_cli(tmp_path, *TINY, "--temp", "1", "--extend", "broken.safetensors")
    assert result.returncode == 2 and "'broken.safetensors' is not a readable latent file" in error_line(result)


def test_a_latent_of_the_other_variant_is_refused(tmp_path):
    save_latents(str(tmp_path / "sd3.safetensors"), torch.zeros(1, 16, 2, 8, 16), variant="sd3", seed=1)
    result = run_cli(tmp_path, *TINY, "--temp", "1", "--extend", "sd3.safetensors")
    assert result.returncode == 2
    assert "made with the sd3 model; this run loaded miniflux. Pass --variant sd3" in error_line(result)


def test_ctrl_c_mid_run_exits_130_with_a_message(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=ROOT)
    process = subprocess.Popen([sys.executable, "-m", "pyramid_flow", "a red panda", *TINY, "--temp", "40",
                                "--output", "x.mp4"], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    seen = ""
    deadline = time.monotonic() + 240
    while "sampling" not in seen and time.monotonic() < deadline:  # wait until the sampler runs
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, (seen + rest)[-2000:]
    assert "pyramid_flow: interrupted." in rest and "Traceback" not in rest
    assert not (tmp_path / "x.mp4").exists()
