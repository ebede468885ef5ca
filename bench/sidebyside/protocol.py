"""The side-runner loop shared by both sides (imported by each side's own interpreter; needs torch only).

A side runner is a long-lived process: the orchestrator sends one JSON command per line on stdin and reads one
JSON reply per line from the runner's original stdout; everything the models print goes to stderr (stdout is
re-pointed there at start, C level included).

Commands: {"cmd": "load", "case": ..., "paths": ...}, {"cmd": "run", "save": path | null},
{"cmd": "profile", "out": path, "rows": n}, {"cmd": "decode_again"} (generate() cases), {"cmd": "exit"}.

Memory is read from /proc/self/status: VmRSS (resident now) and VmHWM (peak), whose peak is reset before every
call through /proc/self/clear_refs, so "peak above X" is the most this call held beyond X.
"""

import gc
import json
import os
import resource
import sys
import time
import traceback

import torch

from ..measure import peak_mb, reset_peak, rss_mb


def usage() -> tuple:
    """(user + system CPU s, system CPU s, minor page faults) of this process, all threads."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_stime, u.ru_minflt


class Runner:
    """What a side implements per case: ``call()`` runs the timed call once and returns its output;
    ``tensors(output)`` gives the dict of tensors saved for the comparison; ``extras()`` any timings taken
    inside the call (e.g. the VAE decode inside generate)."""

    def call(self):
        raise NotImplementedError

    def tensors(self, output) -> dict:
        raise NotImplementedError

    def extras(self) -> dict:
        return {}


class DecodeTimer:
    """Stands in for a VAE's decode inside generate(): times each call and keeps the latents and keyword arguments
    it received, so the same decode can be run again outside generate() (``again``)."""

    def __init__(self, decode):
        self.decode, self.z, self.kwargs, self.seconds = decode, None, None, None

    def __call__(self, z, **kwargs):
        self.z, self.kwargs = z.clone(), kwargs
        start = time.perf_counter()
        out = self.decode(z, **kwargs)
        self.seconds = time.perf_counter() - start
        return out

    def extras(self) -> dict:
        return {} if self.seconds is None else {"decode_in_generate_s": self.seconds}

    def again(self) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            self.decode(self.z.clone(), **self.kwargs)
        return time.perf_counter() - start


class GenerateRunner(Runner):
    """A whole generate() whose VAE decode is a :class:`DecodeTimer` (``self.decoder``)."""

    decoder: DecodeTimer

    def extras(self) -> dict:
        return self.decoder.extras()

    def decode_again(self) -> float:
        """The decode of the last generate()'s latents, once more, outside generate() (same process)."""
        return self.decoder.again()


def serve(runners: dict) -> None:
    """runners: case kind -> Runner class, built with (case, paths). Runs the command loop until 'exit' or end of
    input."""
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the models' prints (Python and C) go to stderr
    sys.stdout = sys.stderr
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    state = {"runner": None, "loaded_rss": None, "calls": 0}

    def reply(obj) -> None:
        reply_stream.write(json.dumps(obj) + "\n")

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            cmd = msg["cmd"]
            if cmd == "exit":
                reply({"ok": True})
                return
            if cmd == "load":
                start = time.perf_counter()
                state["runner"] = runners[msg["case"]["kind"]](msg["case"], msg["paths"])
                touched = make_resident(state["runner"])
                gc.collect()
                state["loaded_rss"] = rss_mb()
                reply({"ok": True, "load_s": time.perf_counter() - start, "rss_mb": state["loaded_rss"],
                       "weights_mb": touched / 2**20,
                       "torch": torch.__version__, "threads": torch.get_num_threads()})
            elif cmd == "run":
                reply(dict(ok=True, **_run(state, msg.get("save"))))
            elif cmd == "decode_again":  # generate() runners: decode the last latents again, outside generate()
                reply({"ok": True, "seconds": state["runner"].decode_again()})
            elif cmd == "profile":
                reply(dict(ok=True, **_profile(state["runner"], msg["out"], msg.get("rows", 15))))
            else:
                raise ValueError(f"unknown command {cmd}")
        except Exception as err:  # reported to the orchestrator, which stops
            reply({"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})


def make_resident(runner, depth: int = 3) -> int:
    """Read every weight of the models the runner holds once, so that weights a loader left memory-mapped on disk
    (safetensors) are resident in the RSS after loading, not paged in by the first call and counted in its peak.
    Returns the bytes read."""
    seen, total = set(), 0

    def visit(obj, level):
        nonlocal total
        if isinstance(obj, torch.nn.Module):
            for tensor in list(obj.parameters()) + list(obj.buffers()):
                key = (tensor.untyped_storage().data_ptr(), tensor.dtype, tensor.numel())
                if key not in seen and tensor.device.type == "cpu" and tensor.is_floating_point():
                    seen.add(key)
                    tensor.detach().float().sum()  # touches every page (a bf16 tensor is copied to float first)
                    total += tensor.numel() * tensor.element_size()
        elif level < depth and hasattr(obj, "__dict__"):
            for value in vars(obj).values():
                visit(value, level + 1)

    with torch.no_grad():
        visit(runner, 0)
    return total


def _run(state, save) -> dict:
    runner = state["runner"]
    gc.collect()
    before = rss_mb()
    resettable = reset_peak()
    with torch.no_grad():
        before_usage, start = usage(), time.perf_counter()
        output = runner.call()
        seconds = time.perf_counter() - start
        cpu, sys_cpu, faults = (b - a for a, b in zip(before_usage, usage()))
    peak = peak_mb()
    if save:
        torch.save(runner.tensors(output), save)
    del output
    gc.collect()
    state["calls"] += 1
    return {
        "seconds": seconds,
        "cpu_s": cpu,  # less sensitive than wall time to other processes on a shared machine
        "sys_s": sys_cpu,  # kernel time: mostly zero-filling pages the allocator took back from the OS
        "minor_faults": faults,
        "call": state["calls"],
        "peak_above_loaded_mb": peak - state["loaded_rss"],  # this call's peak over the RSS right after loading
        "peak_above_before_mb": peak - before,  # ... over the RSS just before the call
        "rss_after_above_loaded_mb": rss_mb() - state["loaded_rss"],  # what stays resident after the call
        "peak_reset": resettable,
        "extras": runner.extras(),
    }


def _profile(runner, out: str, rows: int) -> dict:
    """One call under torch.profiler: per-operator self CPU time, written as a table to ``out``."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        start = time.perf_counter()
        runner.call()
        seconds = time.perf_counter() - start
    averages = prof.key_averages()
    with open(out, "w") as f:
        f.write(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    total = sum(e.self_cpu_time_total for e in averages)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "seconds": seconds,
        "total_self_s": total / 1e6,
        "top": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in top],
    }
