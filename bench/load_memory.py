"""Peak memory while loading a DiT, against the size of its weights (target: at most 1.1x).

A real-width miniFLUX DiT (1920 wide; 2 double and 4 single blocks to keep the file small) with random weights is
written as a bf16 safetensors file; each case then loads it in a fresh process through ``load_dit`` (built on
``meta``, tensors streamed in one by one) and reports the process's peak RSS above what it held before the call,
split into anonymous memory (copies) and file-backed pages (the memory-mapped file, which the kernel can drop).
Every weight is read once after the load, so pages a lazy mapping would defer are counted too.

Run: .venv/bin/python -m bench.load_memory
"""

import json
import os
import subprocess
import sys
import tempfile

import torch

from .measure import proc_status_kib

CONFIG = {"num_layers": 2, "num_single_layers": 4}
CASES = {"bf16 file -> bf16": "bf16", "bf16 file -> fp32": "fp32"}


def status() -> dict:
    return {key: proc_status_kib(key) * 1024 for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def write_checkpoint(folder: str) -> int:
    from safetensors.torch import save_file

    from pyramid_flow.dit.loading import dit_skeleton
    from pyramid_flow.testing.tiny import random_tensors

    model = dit_skeleton("miniflux", CONFIG)
    generator = torch.Generator().manual_seed(0)
    tensors = {name: value.to(torch.bfloat16) for name, value in random_tensors(model, generator)}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_class_name": "PyramidFluxTransformer", **CONFIG}, f)
    save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def measure(folder: str, dtype_name: str) -> dict:
    """In this (fresh) process: load the DiT and report the peak above the RSS before the call."""
    from pyramid_flow.dit import load_dit
    from pyramid_flow.dtypes import WEIGHT_DTYPES

    before = status()
    reset_peak()
    model, _ = load_dit(folder, dtype=WEIGHT_DTYPES[dtype_name])
    sum(float(t.float().sum()) for t in model.state_dict().values())  # touch every weight: pages in a mapped file
    after = status()
    loaded = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"peak": after["VmHWM"] - before["VmRSS"], "anon": after["RssAnon"] - before["RssAnon"],
            "file": after["RssFile"] - before["RssFile"], "loaded": loaded}


def main() -> None:
    if len(sys.argv) == 3:  # child: measure one case
        print(json.dumps(measure(sys.argv[1], sys.argv[2])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        file_bytes = write_checkpoint(tmp)
        print(f"weights file: {file_bytes / 2**20:.0f} MiB (bf16)\n")
        print("| load | weights in memory MiB | peak RSS above before MiB | peak / weights | anonymous after | "
              "file-backed after |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, dtype_name in CASES.items():
            out = subprocess.run([sys.executable, "-m", "bench.load_memory", tmp, dtype_name], capture_output=True,
                                 text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {label} | {r['loaded'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | {r['peak'] / r['loaded']:.2f} | "
                  f"{r['anon'] / 2**20:.0f} | {r['file'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
