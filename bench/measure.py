"""Measurement helpers shared by every benchmark: process memory from Linux's /proc, video fidelity, and what the
CPU is (its model and the rate of the two matrix kernels the DiT can run on), so each table says which machine it
holds for.

Standard library and torch only: the side-by-side runner of the official code imports this module too.
"""

import math
import platform
import time
from typing import Dict

import torch

KIB = 1024
MIB = 1024 * 1024


def proc_status_kib(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now; VmHWM: the high-water mark)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return proc_status_kib("VmRSS") * KIB / MIB


def peak_mb() -> float:
    return proc_status_kib("VmHWM") * KIB / MIB


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def psnr_uint8(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """PSNR in dB of uint8 frames (or any tensors on the 0-255 scale); inf when they are equal."""
    mse = (actual.double() - expected.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_rates(m: int = 6400, k: int = 1920, n: int = 5760, repeats: int = 3) -> Dict[str, float]:
    """GFLOP/s of one float32 [m, k] x [k, n] product (a DiT projection at 768p) with torch's default CPU kernel
    (MKL's sgemm) and with oneDNN's matmul (what pyramid_flow.ops.Linear runs), best of ``repeats``."""
    x, weight = torch.randn(m, k), torch.randn(n, k)
    kernels = {"mkl_sgemm": lambda: torch.nn.functional.linear(x, weight)}
    if torch.backends.mkldnn.is_available():
        kernels["onednn_matmul"] = lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    rates = {}
    with torch.no_grad():
        for name, run in kernels.items():
            run()  # warm-up: primitive creation, page faults
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            rates[name] = 2 * m * k * n / best / 1e9
    return rates


def machine_line() -> str:
    """One line for a results table: CPU model, threads, and both kernels' rates."""
    rates = matmul_rates()
    kernels = ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in rates.items())
    return f"CPU: {cpu_model()}; {torch.get_num_threads()} threads; [6400, 1920] x [1920, 5760] float32: {kernels}"
