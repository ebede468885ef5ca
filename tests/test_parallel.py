"""CFG parallel over torch.distributed (gloo on CPU, processes launched by torchrun): the same latents as one
process within the golden tolerance, refused world sizes and arguments, and no hang when a rank dies."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pyramid_flow.video_io import load_latents, save_latents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT_ATOL = 1e-3  # the golden tolerance for latents
TINY = ["a red panda", "--tiny", "--width", "128", "--height", "64", "--steps", "1", "--video-steps", "1,1,2", "--seed", "7"]


def env(home) -> dict:
    return dict(os.environ, HOME=str(home), PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def single(tmp_path, *args) -> str:
    out = tmp_path / "single.safetensors"
    result = subprocess.run([sys.executable, "-m", "pyramid_flow", *TINY, *args, "--save-latent", str(out), "--output",
                             str(tmp_path / "single.mp4")], capture_output=True, text=True, env=env(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return str(out)


def torchrun(tmp_path, processes: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                           "--master-port", str(free_port()), "-m", "pyramid_flow", *TINY, *args],
                          capture_output=True, text=True, env=env(tmp_path), timeout=timeout, cwd=tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["text-to-video", "extend with a window"])
def test_cfg_parallel_gives_the_single_process_latents(tmp_path, kind):
    args = ["--latent-frames", "4"]
    if kind != "text-to-video":
        import torch

        save_latents(str(tmp_path / "start.safetensors"), torch.randn(1, 16, 2, 8, 16), variant="miniflux", seed=7)
        args = ["--extend", str(tmp_path / "start.safetensors"), "--latent-frames", "3", "--history-window", "2"]
    expected = load_latents(single(tmp_path, *args))[0]
    result = torchrun(tmp_path, 2, *args, "--cfg-parallel", "--save-latent", "two.safetensors", "--output", "two.mp4")
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_latents(str(tmp_path / "two.safetensors"))[0]
    assert (got - expected).abs().max().item() <= LATENT_ATOL
    assert "[rank 0] Wrote" in result.stderr and "[rank 1] Wrote" not in result.stderr  # rank 0 alone writes
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two.mp4", "two.safetensors"]


def test_a_world_size_that_does_not_fit_is_refused_with_the_arithmetic(tmp_path):
    result = torchrun(tmp_path, 3, "--latent-frames", "2", "--cfg-parallel", "--output", "x.mp4")
    assert result.returncode != 0
    assert "torchrun started 3 processes, but --sequence-parallel 1 x 2 (--cfg-parallel) needs 2" in result.stderr


def test_cfg_parallel_without_torchrun_and_sequence_parallel_are_refused(tmp_path):
    for extra, message in ((["--cfg-parallel"], "--cfg-parallel needs 2 processes: launch with torchrun"),
                           (["--sequence-parallel", "2"], "sequence parallel is not available yet")):
        result = subprocess.run([sys.executable, "-m", "pyramid_flow", *TINY, "--latent-frames", "2", *extra],
                                capture_output=True, text=True, env=env(tmp_path), timeout=120, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_ranks_started_with_other_arguments_are_refused(tmp_path):
    port = str(free_port())
    processes = [subprocess.Popen([sys.executable, "-m", "pyramid_flow", *TINY[:-1], seed, "--latent-frames", "2",
                                   "--cfg-parallel", "--output", "x.mp4"], stderr=subprocess.PIPE, text=True,
                                  cwd=tmp_path, env=dict(env(tmp_path), RANK=str(rank), LOCAL_RANK=str(rank),
                                                         WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
                 for rank, seed in ((0, "7"), (1, "8"))]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [2, 2]
    assert all("Ranks [1] were started with other arguments than rank 0" in error for error in errors), errors


def test_a_killed_rank_ends_the_run_with_an_error_in_bounded_time(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                "--master-port", str(free_port()), "-m", "pyramid_flow", *TINY, "--latent-frames", "60",
                                "--video-steps", "6", "--cfg-parallel", "--dist-timeout", "30", "--output", "x.mp4"],
                               stderr=subprocess.PIPE, text=True, env=env(tmp_path), cwd=tmp_path,
                               start_new_session=True)
    seen, deadline = "", time.monotonic() + 240
    while "sampling" not in seen and time.monotonic() < deadline:  # rank 0's progress: the ranks are sampling
        seen += process.stderr.read(1)
    ranks = subprocess.run(["ps", "-o", "pid=", "--ppid", str(process.pid)], capture_output=True, text=True)
    workers = [int(pid) for pid in ranks.stdout.split()]
    assert len(workers) == 2, (ranks.stdout, seen[-2000:])
    os.kill(max(workers), signal.SIGKILL)  # one rank dies mid-run
    started = time.monotonic()
    _, rest = process.communicate(timeout=120)
    assert process.returncode != 0 and time.monotonic() - started < 90
    assert "exitcode  : -9" in seen + rest  # torchrun names the rank that died and its signal
    assert not (tmp_path / "x.mp4").exists()
