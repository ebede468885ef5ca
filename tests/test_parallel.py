"""CFG and sequence parallel over torch.distributed (gloo on CPU, processes launched by torchrun): the same latents
as one process within the golden tolerance for every layout and request, refused world sizes, splits and
arguments, and no hang when a rank dies."""

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


def start_latent(folder) -> list:
    """--extend arguments: a 2-frame latent to continue, with a history window."""
    import torch

    path = folder / "start.safetensors"
    save_latents(str(path), torch.randn(1, 16, 2, 8, 16, generator=torch.Generator().manual_seed(3)),
                 variant="miniflux", seed=7)
    return ["--extend", str(path), "--latent-frames", "3", "--history-window", "2"]


def first_frame(folder) -> list:
    """--image arguments: a 128 x 64 first frame."""
    import numpy as np
    from PIL import Image

    path = folder / "first.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(path)
    return ["--image", str(path), "--latent-frames", "3"]


RUNS = {  # request -> its arguments, given the folder of its inputs
    "text-to-video": lambda folder: ["--latent-frames", "4"],
    "image-to-video": first_frame,
    "extend with a window": start_latent,
    "sd3 text-to-video": lambda folder: ["--variant", "sd3", "--latent-frames", "3"],
}
LAYOUTS = {  # name -> (processes, options)
    "CFG": (2, ["--cfg-parallel"]),
    "SP 2": (2, ["--sequence-parallel", "2"]),
    "SP 3": (3, ["--sequence-parallel", "3"]),
    "SP 4": (4, ["--sequence-parallel", "4"]),
    "SP 2 x CFG": (4, ["--sequence-parallel", "2", "--cfg-parallel"]),
}
CASES = [("CFG", "text-to-video"), ("CFG", "extend with a window"), ("SP 2", "text-to-video"),
         ("SP 3", "image-to-video"), ("SP 4", "sd3 text-to-video"), ("SP 2 x CFG", "text-to-video"),
         ("SP 2 x CFG", "extend with a window")]


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """The one-process latent of each request, made once for the module."""
    made = {}

    def latent(request: str):
        if request not in made:
            folder = tmp_path_factory.mktemp(request.replace(" ", "_"))
            made[request] = load_latents(single(folder, *RUNS[request](folder)))[0]
        return made[request]

    return latent


@pytest.mark.parametrize("layout,request_", CASES, ids=[f"{layout}-{request}" for layout, request in CASES])
def test_parallel_runs_give_the_single_process_latents(tmp_path, single_runs, layout, request_):
    processes, options = LAYOUTS[layout]
    result = torchrun(tmp_path, processes, *RUNS[request_](tmp_path), *options, "--save-latent", "many.safetensors",
                      "--output", "many.mp4")
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_latents(str(tmp_path / "many.safetensors"))[0]
    assert (got - single_runs(request_)).abs().max().item() <= LATENT_ATOL
    assert "[rank 0] Wrote" in result.stderr and "[rank 1] Wrote" not in result.stderr  # rank 0 alone writes
    assert sorted(p.name for p in tmp_path.glob("many*")) == ["many.mp4", "many.safetensors"]


def test_a_sequence_split_that_does_not_divide_the_heads_is_refused_with_the_valid_sizes(tmp_path):
    result = torchrun(tmp_path, 4, "--latent-frames", "2", "--sequence-parallel", "4", "--output", "x.mp4")
    assert result.returncode != 0
    assert "--sequence-parallel 4 does not divide the DiT's 6 attention heads: use one of [2, 3, 6]" in \
        result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "x.mp4").exists()


def test_a_world_size_that_does_not_fit_is_refused_with_the_arithmetic(tmp_path):
    result = torchrun(tmp_path, 3, "--latent-frames", "2", "--cfg-parallel", "--output", "x.mp4")
    assert result.returncode != 0
    assert "torchrun started 3 processes, but --sequence-parallel 1 x 2 (--cfg-parallel) needs 2" in result.stderr


def test_parallel_options_without_torchrun_are_refused(tmp_path):
    for extra, message in ((["--cfg-parallel"], "--cfg-parallel needs 2 processes: launch with torchrun"),
                           (["--sequence-parallel", "3", "--cfg-parallel"],
                            "--sequence-parallel 3 --cfg-parallel needs 6 processes: launch with torchrun "
                            "--nproc-per-node 6"),
                           (["--sequence-parallel", "0"], "--sequence-parallel 0: give the number of ranks")):
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
