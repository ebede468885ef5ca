"""The GPU check: speed and memory of full-size Pyramid Flow models with random weights, against the memory model.

Run through ``bench/gpu.sh`` (one CUDA GPU, under 8 minutes, no network, no real weights). Parts, in order of
priority; each starts only while the time budget lasts, and the report says which were skipped:

1. miniFLUX 384p 5 s text-to-video (16 latent frames, official steps 20/20/20 then 10/10/10, CFG), bf16;
2. its save-memory decode (tile 256, window 1);
3. the last units of a 768p 10 s video (a random 28-frame history extended to 31), with the time of every step;
4. a short 768p decode (the tiles of a 768p frame);
5. attention: PyTorch SDPA against sageattention / flash-attn where installed, at the 768p last-frame shape.

Memory is ``torch.cuda.max_memory_allocated`` above what the resident weights hold, the quantity ComfyUI's
``load_models_gpu(memory_required=...)`` asks for, compared with the pack's memory model (``pyramid_flow/memory.py``).
"With offload" is one model on the GPU at a time (weights of that model + its peak); "without" keeps the DiT and
the VAE resident together. Text encoders are not run: random T5/CLIP embeddings stand in (their cost is a few
hundred ms once per prompt).

``--dry-run`` runs the same code on the CPU with the tiny test models and tiny shapes (memory from the process's
peak RSS, which is rough at these sizes): what CI runs, so the script is known to work before a GPU is lent.
"""

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from pyramid_flow.attention import sdpa_attention
from pyramid_flow.dit.loading import dit_skeleton
from pyramid_flow.latents import LATENT_CHANNELS, SPATIAL_SCALE, video_frames_for, latent_frames_for_seconds
from pyramid_flow.noise import SeededNoise
from pyramid_flow.history import max_sequence_length
from pyramid_flow.memory import decode_memory, dit_memory
from pyramid_flow.sampler import PyramidSampler, StepInfo
from pyramid_flow.testing.tiny import TINY_DIT, tiny_vae_config, with_random_weights
from pyramid_flow.text.embeddings import TEXT_TOKENS, TextEmbeddings
from pyramid_flow.vae import SAVE_MEMORY_DECODE, CausalVideoVAE

GIB = 2**30
TOLERANCE = 0.20  # the memory model must land within +-20% of the measured peak


@dataclass
class Plan:
    """Sizes of one check: the real ones on a GPU, tiny ones for --dry-run."""

    device: torch.device
    dtype: torch.dtype
    dit_config: Dict
    vae_config: Dict
    t2v: Tuple[int, int, int]  # height, width, latent frames
    first_steps: List[int]
    video_steps: List[int]
    tail: Tuple[int, int, int, int]  # height, width, history frames, new frames
    short_decode: Tuple[int, int, int]  # height, width, latent frames
    attention_repeats: int


def full_plan() -> Plan:
    return Plan(torch.device("cuda"), torch.bfloat16, {}, {}, (384, 640, latent_frames_for_seconds(5)), [20, 20, 20],
                [10, 10, 10], (768, 1280, latent_frames_for_seconds(10) - 3, 3), (768, 1280, 4), 20)


def dry_plan() -> Plan:
    return Plan(torch.device("cpu"), torch.float32, TINY_DIT["miniflux"], tiny_vae_config(), (128, 128, 3), [1, 1, 1],
                [1, 1, 1], (128, 192, 3, 2), (128, 192, 2), 2)


class Meter:
    """Peak bytes allocated above a baseline, between start() and stop()."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def allocated(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        return self._status("VmRSS")

    def start(self) -> None:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # resets the peak RSS (VmHWM)
                f.write("5")
        self.base = self.allocated()

    def stop(self) -> int:
        self.sync()
        peak = torch.cuda.max_memory_allocated() if self.cuda else self._status("VmHWM")
        return peak - self.base

    @staticmethod
    def _status(field_name: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field_name} not in /proc/self/status")


@dataclass
class Report:
    dry_run: bool
    lines: List[str] = field(default_factory=list)
    checks: List[Tuple[str, int, int]] = field(default_factory=list)  # what, predicted, measured

    def section(self, title: str, *lines: str) -> None:
        self.lines += ["", f"## {title}", "", *lines]
        print(f"[gpu_check] {title}", flush=True)

    def check(self, what: str, predicted: int, measured: int) -> str:
        self.checks.append((what, predicted, measured))
        return f"{measured / GIB:.2f} GiB measured, {predicted / GIB:.2f} GiB predicted ({ratio(predicted, measured)})"

    def memory_table(self) -> List[str]:
        rows = ["| Call | Predicted GiB | Measured GiB | Predicted / measured | Within ±20% |", "|---|---:|---:|---:|---|"]
        for what, predicted, measured in self.checks:
            within = measured > 0 and abs(predicted / measured - 1) <= TOLERANCE
            rows.append(f"| {what} | {predicted / GIB:.3f} | {measured / GIB:.3f} | {ratio(predicted, measured)} | "
                        f"{'yes' if within else 'NO'} |")
        return rows


def ratio(predicted: int, measured: int) -> str:
    return f"{predicted / measured:.3f}" if measured > 0 else "n/a"


def text_embeddings(dit: torch.nn.Module, generator: torch.Generator) -> Tuple[TextEmbeddings, TextEmbeddings]:
    """Random T5 / pooled embeddings of the DiT's widths: a 20-token prompt and an 8-token negative prompt."""
    width, pooled = dit.context_embedder.in_features, dit.time_text_embed.text_embedder.linear_1.in_features
    device = generator.device

    def embed(tokens: int) -> TextEmbeddings:
        mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.int64, device=device)
        mask[:, :tokens] = 1
        hidden = torch.randn(1, TEXT_TOKENS, width, generator=generator, device=device) * mask[..., None]
        return TextEmbeddings(hidden, mask, torch.randn(1, pooled, generator=generator, device=device))

    return embed(20), embed(8)


def step_timer(meter: Meter, record: List[Tuple[StepInfo, float]]) -> Callable[[StepInfo], None]:
    last = [time.perf_counter()]

    def callback(info: StepInfo) -> None:
        meter.sync()
        now = time.perf_counter()
        record.append((info, now - last[0]))
        last[0] = now

    return callback


def unit_times(record: List[Tuple[StepInfo, float]]) -> Dict[int, float]:
    times: Dict[int, float] = {}
    for info, seconds in record:
        times[info.unit] = times.get(info.unit, 0.0) + seconds
    return times


class GpuCheck:
    def __init__(self, plan: Plan, report: Report, budget_s: float):
        self.plan, self.report, self.budget_s = plan, report, budget_s
        self.start = time.perf_counter()
        self.meter = Meter(plan.device)
        self.generator = torch.Generator(plan.device).manual_seed(0)
        self.weights: Dict[str, int] = {}
        self.latents: Optional[torch.Tensor] = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def build(self) -> None:
        plan = self.plan
        self.meter.start()
        self.dit = with_random_weights(dit_skeleton("miniflux", plan.dit_config, plan.dtype), self.generator)
        self.weights["DiT"] = self.meter.allocated() - self.meter.base
        self.meter.start()
        vae = CausalVideoVAE(**plan.vae_config, dtype=plan.dtype, device="meta")
        self.vae = with_random_weights(vae, self.generator)
        self.weights["VAE"] = self.meter.allocated() - self.meter.base
        self.cond, self.uncond = text_embeddings(self.dit, self.generator)
        self.report.section("Models", f"miniFLUX DiT {self.weights['DiT'] / GIB:.2f} GiB and causal VAE "
                            f"{self.weights['VAE'] / GIB:.2f} GiB of {str(plan.dtype).removeprefix('torch.')} random "
                            f"weights, built in {self.elapsed():.0f} s.")

    def sampler(self, record: List) -> PyramidSampler:
        return PyramidSampler(self.dit, SeededNoise(0), self.plan.device, self.plan.dtype,
                              callback=step_timer(self.meter, record))

    def offload_lines(self, what: str, own: str, peak: int) -> str:
        other = sum(size for name, size in self.weights.items() if name != own)
        with_offload = self.weights[own] + peak
        return (f"{what}: {with_offload / GIB:.2f} GiB with offload ({own} weights + peak), "
                f"{(with_offload + other) / GIB:.2f} GiB without (DiT and VAE resident).")

    def text_to_video(self) -> None:
        height, width, temp = self.plan.t2v
        record: List = []
        self.meter.start()
        started = time.perf_counter()
        self.latents = self.sampler(record).text_to_video(
            self.cond, self.uncond, height=height, width=width, latent_frames=temp, first_frame_steps=self.plan.first_steps,
            video_steps=self.plan.video_steps, guidance_scale=7.0, video_guidance_scale=5.0)
        seconds = time.perf_counter() - started
        peak = self.meter.stop()
        predicted = dit_memory(self.dit, height, width, temp - 1, 2, self.plan.dtype)
        units = unit_times(record)
        self.report.section(
            f"Text-to-video {width}x{height}, {temp} latent frames ({video_frames_for(temp)} frames)",
            f"- sampling: {seconds:.1f} s ({len(record)} DiT steps, CFG batch 2); first frame {units[0]:.1f} s, "
            f"last frame {units[temp - 1]:.1f} s",
            f"- activations: {self.report.check(f'DiT, {height}p unit {temp - 1}', predicted, peak)}",
            f"- {self.offload_lines('sampling peak', 'DiT', peak)}",
            "", "| Latent frame | Seconds |", "|---:|---:|", *[f"| {u} | {s:.2f} |" for u, s in units.items()])

    def decode(self, latents: torch.Tensor, label: str) -> None:
        settings = SAVE_MEMORY_DECODE
        self.meter.start()
        started = time.perf_counter()
        with torch.no_grad():
            video = self.vae.decode(latents, temporal_chunk=True, window_size=settings.window_size,
                                    tile_sample_min_size=settings.tile_sample_min_size)
        seconds = time.perf_counter() - started
        peak = self.meter.stop()
        del video
        predicted = decode_memory(self.vae, tuple(latents.shape), settings.window_size, settings.tile_sample_min_size)
        frames = video_frames_for(latents.shape[2])
        self.report.section(
            f"Decode {label}: {frames} frames, tile {settings.tile_sample_min_size}, window {settings.window_size}",
            f"- {seconds:.1f} s ({frames / seconds:.1f} frames/s)",
            f"- peak: {self.report.check(f'VAE decode, {label}', predicted, peak)}",
            f"- {self.offload_lines('decode peak', 'VAE', peak)}")

    def decode_text_to_video(self) -> None:
        self.decode(self.latents, f"{self.plan.t2v[0]}p, {self.plan.t2v[2]} latent frames")

    def decode_short(self) -> None:
        height, width, temp = self.plan.short_decode
        latents = torch.randn(1, LATENT_CHANNELS, temp, height // SPATIAL_SCALE, width // SPATIAL_SCALE,
                              generator=self.generator, device=self.plan.device, dtype=self.plan.dtype)
        self.decode(latents, f"{height}p, {temp} latent frames")

    def last_units(self) -> None:
        height, width, history, units = self.plan.tail
        frames = torch.randn(1, LATENT_CHANNELS, history, height // SPATIAL_SCALE, width // SPATIAL_SCALE,
                             generator=self.generator, device=self.plan.device, dtype=self.plan.dtype)
        record: List = []
        self.meter.start()
        started = time.perf_counter()
        self.sampler(record).extend(self.cond, self.uncond, history=frames, new_latent_frames=units, steps=self.plan.video_steps,
                                    guidance_scale=7.0, video_guidance_scale=5.0)
        seconds = time.perf_counter() - started
        peak = self.meter.stop()
        last = history + units - 1
        predicted = dit_memory(self.dit, height, width, last, 2, self.plan.dtype)
        rows = [f"| {info.unit} | {info.stage + 1} | {info.step + 1} | {s * 1000:.0f} |" for info, s in record]
        self.report.section(
            f"Last {units} latent frames of a {width}x{height} video ({history + units} latent frames)",
            f"- {seconds:.1f} s for {len(record)} DiT steps; per frame: "
            + ", ".join(f"{u}: {s:.1f} s" for u, s in unit_times(record).items()),
            f"- activations: {self.report.check(f'DiT, {height}p unit {last}', predicted, peak)}",
            f"- {self.offload_lines('sampling peak', 'DiT', peak)}",
            "", "| Latent frame | Stage | Step | ms |", "|---:|---:|---:|---:|", *rows)

    def attention(self) -> None:
        height, width, history, units = self.plan.tail
        model = self.dit
        heads = model.transformer_blocks[0].attn.heads
        head_dim = model.context_embedder.out_features // heads
        keys = max_sequence_length(height, width, history + units - 1)
        queries = max_sequence_length(height, width, 0) - TEXT_TOKENS  # the last frame's tokens at full size
        shape = dict(generator=self.generator, device=self.plan.device, dtype=self.plan.dtype)
        q = torch.randn(2, heads, queries, head_dim, **shape)
        k, v = (torch.randn(2, heads, keys, head_dim, **shape) for _ in range(2))
        rows = [self.time_attention("PyTorch SDPA", lambda: sdpa_attention(q, k, v), q, k)]
        for name, call in optional_backends(q, k, v).items():
            rows.append(self.time_attention(name, call, q, k) if call else f"| {name} | not installed | |")
        self.report.section(
            f"Attention of the last {height}p frame: {queries} queries x {keys} keys, {heads} heads of {head_dim}",
            "| Backend | ms per call | TFLOP/s |", "|---|---:|---:|", *rows)

    def time_attention(self, name: str, call: Callable[[], torch.Tensor], q: torch.Tensor, k: torch.Tensor) -> str:
        call()
        self.meter.sync()
        started = time.perf_counter()
        for _ in range(self.plan.attention_repeats):
            call()
        self.meter.sync()
        seconds = (time.perf_counter() - started) / self.plan.attention_repeats
        flops = 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        return f"| {name} | {seconds * 1000:.2f} | {flops / seconds / 1e12:.1f} |"

    def run(self) -> None:
        self.build()
        parts = [("text-to-video", self.text_to_video), ("decode", self.decode_text_to_video),
                 ("last units at 768p", self.last_units), ("short 768p decode", self.decode_short),
                 ("attention backends", self.attention)]
        for name, part in parts:
            if self.elapsed() > self.budget_s:
                self.report.section(f"Skipped: {name}", f"The {self.budget_s:.0f} s budget was spent.")
                continue
            if name == "decode" and self.latents is None:
                continue
            part()


def optional_backends(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Dict[str, Optional[Callable]]:
    """sageattention and flash-attn when importable (and on CUDA), else None."""
    backends: Dict[str, Optional[Callable]] = {"sageattention": None, "flash-attn": None}
    if q.device.type != "cuda":
        return backends
    if importlib.util.find_spec("sageattention"):
        from sageattention import sageattn

        backends["sageattention"] = lambda: sageattn(q, k, v, tensor_layout="HND")
    if importlib.util.find_spec("flash_attn"):
        from flash_attn import flash_attn_func

        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        backends["flash-attn"] = lambda: flash_attn_func(qt, kt, vt)
    return backends


def environment(plan: Plan, dry_run: bool) -> List[str]:
    device = torch.cuda.get_device_name() if plan.device.type == "cuda" else platform.processor() or "CPU"
    kind = "DRY RUN (tiny models, CPU; memory is peak RSS, rough at these sizes): not a measurement" if dry_run else \
        "full-size random weights"
    return [f"- {kind}", f"- device: {device}; torch {torch.__version__}"
            + (f", CUDA {torch.version.cuda}" if plan.device.type == "cuda" else ""),
            f"- date: {datetime.date.today().isoformat()}; dtype {str(plan.dtype).removeprefix('torch.')}"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models and shapes on the CPU (CI)")
    parser.add_argument("--out", help="the markdown report (default docs/benchmarks-gpu.md; --dry-run: required)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new part after this many seconds")
    args = parser.parse_args(argv)
    if args.dry_run and not args.out:
        parser.error("--dry-run needs --out (it must not overwrite docs/benchmarks-gpu.md)")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run with --dry-run on a machine without one")
    plan = dry_plan() if args.dry_run else full_plan()
    report = Report(args.dry_run)
    GpuCheck(plan, report, args.budget_s).run()
    lines = ["# GPU check (`bench/gpu.sh`)", "", *environment(plan, args.dry_run),
             "", "## Memory model against measured peaks", "", *report.memory_table(), *report.lines]
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                                   "benchmarks-gpu.md")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"[gpu_check] wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
