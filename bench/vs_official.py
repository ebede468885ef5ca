"""Side-by-side benchmark: this project vs the OFFICIAL Pyramid Flow code (jy0205/Pyramid-Flow, commit 3040d717).

    .venv/bin/python -m bench.vs_official --official ../official-work/ref \\
        --official-python ../official-work/venv/bin/python [--quick] [--cases dit_flux_u2,vae_tile] \\
        [--repeats 3] [--profile] [--workdir DIR] [--json results.json]

(``../shared/official/setup_official.sh`` builds such a checkout and venv.) Each implementation runs in its own
process with its own interpreter (the official venv's python for the official side, ``--ours-python``, default
this interpreter, for ours). Per case:

1. Random weights (seeded) are written once to ``--workdir`` in the official Hugging Face layout with config.json,
   and the inputs to a .pt file; both sides load those same files (cases: bench/sidebyside/cases.py).
2. A fresh process per side loads the weights and reads each one once (a loader may leave safetensors weights
   memory-mapped, to be paged in by the first call); its RSS then is the baseline. The first call is made
   (official, then ours); memory = peak RSS of that call above the baseline (VmHWM, reset before the call).
3. N more calls, interleaved official, ours, official, ours, ...; time = min and median of these (fp32, CPU,
   2 threads). Each call's peak above the RSS just before it shows how memory behaves over repeated calls.
4. The outputs of the first calls are compared (max |diff|; uint8 frames and latents for generate()).
   generate() cases also time the VAE decode inside generate() and, once more, outside it (same process).
5. --profile: one more call per side under torch.profiler; per-operator self CPU time tables go to the workdir.

--quick uses tiny shapes (about a minute in all): a smoke test of the whole harness, not a measurement.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from .measure import cpu_model, matmul_rates
from .sidebyside import cases as C

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIDES = ("official", "ours")


# --- side processes --------------------------------------------------------------------------------------------

class Side:
    """One side-runner process (see sidebyside/protocol.py)."""

    def __init__(self, name, argv, log_path, env):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env, cwd=REPO)

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} side exited (rc {self.proc.wait()}); see {self.log_path}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.name} side failed on {msg['cmd']}: {reply['error']}\n{reply['traceback']}")
        return reply

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.ask(cmd="exit")
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


def side_argv(args, name):
    if name == "official":
        argv = [args.official_python, "-m", "bench.sidebyside.side_official", "--official", args.official]
        if args.tv_stub:
            argv += ["--tv-stub", args.tv_stub]
        return argv
    return [args.ours_python, "-m", "bench.sidebyside.side_ours"]


def side_env(threads, omp_wait_policy="passive"):
    """Both sides get the same thread settings. OMP_WAIT_POLICY=PASSIVE by default: with the default spinning
    barriers, a 2-thread process whose second thread loses its core to another process stalls at every barrier
    (a tiny DiT forward went from 0.02 s to 1.1 s on the shared 2-core machine); passive threads sleep instead.
    For the large calls here the policy makes no measurable difference on an idle machine."""
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    env.pop("PYTHONPATH", None)  # each side runs as a module from the repository root (cwd), nothing else
    return env


# --- one case --------------------------------------------------------------------------------------------------

def run_case(case, paths, args, log) -> dict:
    env = side_env(args.threads, args.omp_wait_policy)
    sides = {name: Side(name, side_argv(args, name), os.path.join(args.workdir, f"log_{case['name']}_{name}.txt"), env)
             for name in SIDES}
    result = {"case": case, "sides": {}, "loadavg_before": loadavg()}
    try:
        for name, side in sides.items():
            result["sides"][name] = {"load": side.ask(cmd="load", case=case, paths=paths), "calls": []}
            load = result["sides"][name]["load"]
            log(f"  {name:8s} loaded in {load['load_s']:.1f} s, weights {load['weights_mb']:.0f} MB, RSS {load['rss_mb']:.0f} MB")
        outputs = {name: os.path.join(args.workdir, f"out_{case['name']}_{name}.pt") for name in SIDES}
        for name, side in sides.items():  # first call: memory in a fresh process, outputs kept for the comparison
            busy = wait_idle(args.wait_idle)
            reply = side.ask(cmd="run", save=outputs[name])
            reply["busy_before"] = busy
            result["sides"][name]["first"] = reply
            log(f"  {name:8s} first call {reply['seconds']:7.2f} s, peak +{reply['peak_above_loaded_mb']:6.0f} MB")
        for k in range(args.repeats):  # interleaved timed calls
            for name, side in sides.items():
                busy = wait_idle(args.wait_idle)
                reply = side.ask(cmd="run", save=None)
                reply["busy_before"] = busy
                result["sides"][name]["calls"].append(reply)
                log(f"  {name:8s} call {k + 2}     {reply['seconds']:7.2f} s, peak +{reply['peak_above_before_mb']:6.0f} MB "
                    f"above the RSS before it, RSS +{reply['rss_after_above_loaded_mb']:.0f} MB after")
        if case["kind"] == "generate":
            for _ in range(args.decode_repeats):
                for name, side in sides.items():
                    wait_idle(args.wait_idle)
                    result["sides"][name].setdefault("decode_again_s", []).append(side.ask(cmd="decode_again")["seconds"])
        if args.profile:
            for name, side in sides.items():
                wait_idle(args.wait_idle)
                out = os.path.join(args.workdir, f"profile_{case['name']}_{name}.txt")
                result["sides"][name]["profile"] = side.ask(cmd="profile", out=out, rows=args.profile_rows)
                log(f"  {name:8s} profile table: {out}")
    finally:
        for side in sides.values():
            side.close()
    result["loadavg_after"] = loadavg()
    result["diff"] = compare(outputs)
    return result


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` s (/proc/stat). Our side runners are idle while we sample."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    (idle0, total0), _ = sample(), time.sleep(interval)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_idle(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until other processes leave the CPUs nearly idle; returns the last busy
    fraction. Two-thread timings on a shared 2-core machine are meaningless while others compute."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy(0.5) if max_wait > 0 else float("nan")
    while max_wait > 0 and busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    return busy


def loadavg() -> float:
    """The 1-minute load average: other processes on the machine skew CPU timings (the interleaving spreads it)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def compare(outputs) -> dict:
    """max |official - ours| per saved tensor (uint8 frames compared as integers)."""
    import torch

    a, b = (torch.load(outputs[name]) for name in SIDES)
    diff = {}
    for key in a:
        x, y = a[key], b[key]
        if tuple(x.shape) != tuple(y.shape):
            diff[key] = f"shape {tuple(x.shape)} vs {tuple(y.shape)}"
        elif x.dtype == torch.uint8:
            diff[key] = int((x.int() - y.int()).abs().max())
        else:
            diff[key] = float((x.double() - y.double()).abs().max())
    return diff


# --- report ----------------------------------------------------------------------------------------------------

def times(side, key="seconds") -> list:
    return [c[key] for c in side["calls"]] or [side["first"][key]]


def summary_row(r) -> str:
    o, u = r["sides"]["official"], r["sides"]["ours"]
    to, tu = times(o), times(u)
    mo, mu = statistics.median(to), statistics.median(tu)
    mem_o, mem_u = o["first"]["peak_above_loaded_mb"], u["first"]["peak_above_loaded_mb"]
    co, cu = statistics.median(times(o, "cpu_s")), statistics.median(times(u, "cpu_s"))
    diff = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in r["diff"].items())
    return (f"| {r['case']['name']} | {min(to):.2f} / {mo:.2f} s | {min(tu):.2f} / {mu:.2f} s | {mo / mu:.2f}x "
            f"| {co:.1f} / {cu:.1f} s | {co / cu:.2f}x | {mem_o:,.0f} MB | {mem_u:,.0f} MB | {diff} |")


def kernel_row(r) -> str:
    o, u = r["sides"]["official"], r["sides"]["ours"]

    def cell(side):
        calls = [side["first"], *side["calls"]]
        if "sys_s" not in calls[0]:
            return "-"
        return " ; ".join(f"{c['sys_s']:.1f} s / {c['minor_faults'] / 1000:.0f}k" for c in calls)

    return f"| {r['case']['name']} | {cell(o)} | {cell(u)} |"


def memory_row(r) -> str:
    """Per call (first, then the repeats): peak above the RSS after loading / peak above the RSS just before the
    call / RSS left after the call above the RSS after loading."""
    def cells(side):
        calls = [side["first"], *side["calls"]]
        return " ; ".join(f"{c['peak_above_loaded_mb']:.0f}/{c['peak_above_before_mb']:.0f}/{c['rss_after_above_loaded_mb']:.0f}"
                          for c in calls)

    return f"| {r['case']['name']} | {cells(r['sides']['official'])} | {cells(r['sides']['ours'])} |"


def decode_row(r) -> str:
    o, u = r["sides"]["official"], r["sides"]["ours"]

    def cells(side):
        inside = [c["extras"]["decode_in_generate_s"] for c in [side["first"], *side["calls"]]]
        again = side.get("decode_again_s", [])
        return statistics.median(inside), (statistics.median(again) if again else float("nan"))

    (io, ao), (iu, au) = cells(o), cells(u)
    return (f"| {r['case']['name']} | {io:.2f} s | {iu:.2f} s | {iu / io:.2f}x | {ao:.2f} s | {au:.2f} s "
            f"| {au / ao:.2f}x |")


def busy_note(r) -> str:
    busy = [c.get("busy_before", float("nan")) for side in r["sides"].values() for c in [side["first"], *side["calls"]]]
    busy = [b for b in busy if b == b]
    return f"; CPUs busy before the calls: median {statistics.median(busy):.0%}, max {max(busy):.0%}" if busy else ""


def machine(threads: int) -> dict:
    """The CPU the numbers hold for: its model and both matrix kernels' rates at the benchmark's thread count."""
    import torch

    torch.set_num_threads(threads)
    return {"cpu": cpu_model(), "threads": threads, "gflops": matmul_rates()}


def machine_row(info: dict) -> str:
    rates = ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in info["gflops"].items())
    return (f"CPU: {info['cpu']}, {info['threads']} threads; float32 [6400, 1920] x [1920, 5760]: {rates}. The DiT "
            "speed-up follows the ratio of the two kernels (ours runs oneDNN's, the official MKL's).")


def report(results, args, info: dict = None) -> str:
    first = results[0]["sides"]
    lines = [machine_row(info), ""] if info else []
    lines += [
        f"official torch {first['official']['load']['torch']}, ours torch {first['ours']['load']['torch']}, "
        f"threads {first['ours']['load']['threads']}, OMP_WAIT_POLICY {getattr(args, 'omp_wait_policy', '?')}, "
        f"repeats {args.repeats}{' (--quick)' if args.quick else ''}",
        "",
        "| case | official wall min / median | ours wall min / median | official / ours (median wall) "
        "| CPU time official / ours (median) | official / ours (CPU) "
        "| extra memory, first call: official | ours | max abs diff (first calls) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [summary_row(r) for r in results]
    lines += ["", "Memory over the calls of one process (MB, first call then each repeat): peak above the RSS after "
              "loading / peak above the RSS just before the call / RSS left after the call above the RSS after loading.",
              "", "| case | official | ours |", "|---|---|---|"]
    lines += [memory_row(r) for r in results]
    lines += ["", "Kernel CPU time / minor page faults per call (first call, then each repeat):", "",
              "| case | official | ours |", "|---|---|---|"]
    lines += [kernel_row(r) for r in results]
    generated = [r for r in results if r["case"]["kind"] == "generate"]
    if generated:
        lines += ["", "VAE decode inside generate() (median over all calls) and the same decode again outside it, "
                  "same process:", "",
                  "| case | official in generate() | ours in generate() | ours / official | official again "
                  "| ours again | ours / official |",
                  "|---|---|---|---|---|---|---|"]
        lines += [decode_row(r) for r in generated]
    lines += ["", "cases (1-min load average before -> after, this benchmark itself adds about 1):"]
    lines += [f"- {r['case']['name']}: {r['case']['what']} (load {r['loadavg_before']:.1f} -> {r['loadavg_after']:.1f}"
              f"{busy_note(r)})" for r in results]
    profiled = [r for r in results if "profile" in r["sides"]["ours"]]
    for r in profiled:
        for name in SIDES:
            p = r["sides"][name]["profile"]
            lines += ["", f"profile {r['case']['name']} / {name}: {p['seconds']:.2f} s wall, "
                          f"{p['total_self_s']:.2f} s self CPU in all ops; top ops by self CPU time:"]
            lines += [f"  {e['self_s']:8.3f} s {100 * e['self_s'] / p['total_self_s']:5.1f}%  {e['calls']:7d} calls  {e['op']}"
                      for e in p["top"][: args.profile_rows]]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------------

def write_fixtures(workdir, selected, ours_python) -> dict:
    """Weights and inputs, written by the project's interpreter (it has the model classes)."""
    code = ("import json, sys; from bench.sidebyside import fixtures; cases = json.loads(sys.argv[2]); "
            "print(json.dumps({c['name']: fixtures.prepare(c, sys.argv[1]) for c in cases}))")
    out = subprocess.run([ours_python, "-c", code, workdir, json.dumps(selected)], check=True,
                         capture_output=True, text=True, env=side_env(2), cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", help="checkout of jy0205/Pyramid-Flow (e.g. ../official-work/ref)")
    parser.add_argument("--official-python", help="python of a venv where the official code runs")
    parser.add_argument("--ours-python", default=sys.executable, help="python for this project (default: this one)")
    parser.add_argument("--tv-stub", default=os.path.join(REPO, "..", "shared", "official"),
                        help="folder of tv_stub.py, the torchvision stand-in ('' when torchvision imports)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke test (~1 min)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all; --quick: one per kind)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved calls after the first (default 3, quick 1)")
    parser.add_argument("--decode-repeats", type=int, default=None, help="generate(): decodes outside generate() per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait-policy", choices=["passive", "active", "default"], default="passive",
                        help="OMP_WAIT_POLICY of both sides (default passive: robust on a shared machine)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="before each call wait up to S s for the other processes to leave the CPUs idle "
                             "(for shared machines; the CPU busy fraction seen is recorded)")
    parser.add_argument("--profile", action="store_true", help="one torch.profiler call per side and case")
    parser.add_argument("--profile-rows", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="weights, inputs, outputs and logs (kept; default: a temp dir)")
    parser.add_argument("--json", default=None, help="write all measurements here")
    parser.add_argument("--report", default=None, metavar="JSON", help="only print the report of a --json file")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        args.__dict__.update(saved["args"])
        print(report(saved["results"], args, saved.get("machine")))
        return
    if not (args.official and args.official_python):
        parser.error("--official and --official-python are required")
    args.official = os.path.abspath(args.official)
    args.tv_stub = os.path.abspath(args.tv_stub) if args.tv_stub and os.path.isfile(
        os.path.join(args.tv_stub, "tv_stub.py")) else None
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.decode_repeats is None:
        args.decode_repeats = 1 if args.quick else 2
    temporary = args.workdir is None
    args.workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="pyramid-vs-official-"))
    os.makedirs(args.workdir, exist_ok=True)

    try:
        selected = C.cases(args.quick, [n.strip() for n in args.cases.split(",") if n.strip()] or None)
    except ValueError as err:
        parser.error(str(err))

    def log(text):
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        info = machine(args.threads)
        log(f"[vs_official] {machine_row(info)}")
        log(f"[vs_official] writing weights and inputs under {args.workdir}")
        paths = write_fixtures(args.workdir, selected, args.ours_python)
        results = []
        for case in selected:
            log(f"[vs_official] {case['name']}: {case['what']}")
            results.append(run_case(case, paths[case["name"]], args, log))
        print(report(results, args, info))
        log(f"[vs_official] done in {time.perf_counter() - start:.0f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": {k: getattr(args, k) for k in ("quick", "repeats", "threads", "profile_rows",
                                                              "omp_wait_policy")},
                       "machine": info, "results": results}, f, indent=1)
        bad = [r["case"]["name"] for r in results if any(isinstance(v, str) for v in r["diff"].values())]
        if bad:
            sys.exit(f"output shapes differ in {bad}")
    finally:
        if temporary and not args.profile:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
