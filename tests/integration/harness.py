"""Shared machinery of the integration lanes: a real ComfyUI (one per lane, built by .ci/setup_comfyui.py), a test
base directory with tiny checkpoints, a server process and a small HTTP client.

The lane is chosen by the environment that .ci/integration.sh sets from the setup's output: ``COMFYUI_VERSION``
(the version the lane was set up for; the tests check the server reports it), ``COMFYUI_ROOT`` (default
``.cache/comfyui/<COMFYUI_VERSION>/ComfyUI``) and ``COMFYUI_FRONTEND`` (the frontend package installed in the lane).
Run the tests with that lane's interpreter (``COMFYUI_PYTHON``): the server and the in-process tests use it.

Missing prerequisites skip locally and FAIL under CI=true.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
PACK_DIR_NAME = "pyramid-flow-video"
TESTING_PACK_NAME = "pyramid_flow_testing"
COMFYUI_VERSION = os.environ.get("COMFYUI_VERSION", "")
COMFYUI_FRONTEND = os.environ.get("COMFYUI_FRONTEND", "")
ARTIFACTS = os.environ.get("PYRAMID_FLOW_ARTIFACTS",
                           os.path.join(REPO_ROOT, "artifacts", *([COMFYUI_VERSION] if COMFYUI_VERSION else [])))

# Tiny random text encoders with ComfyUI's vocabularies, so ComfyUI's own tokenizers and CLIP classes run on them.
# Dimensions fit the tiny DiTs of pyramid_flow.tiny: T5 d_model 32 = joint_attention_dim; miniFLUX pooled = CLIP-L hidden 32;
# SD3 pooled 80 = CLIP-L projection 32 + CLIP-G projection 48. CLIP-G keeps 32 layers because ComfyUI tells
# CLIP-G from CLIP-L by the presence of layer 30; CLIP-L needs 3 layers for SD3's penultimate-layer option.
TINY_TEXT_ENCODERS = {
    "clip_l.safetensors": ("clip_l", {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                      "num_hidden_layers": 3, "projection_dim": 32, "hidden_act": "quick_gelu"}),
    "clip_g.safetensors": ("clip_g", {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 3,
                                      "num_hidden_layers": 32, "projection_dim": 48, "hidden_act": "gelu"}),
    "t5xxl_fp16.safetensors": ("t5xxl", {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "num_layers": 2}),
}


def require(condition: bool, message: str) -> None:
    """A missing prerequisite of the lane fails its tests (never a skip, in CI or not)."""
    if not condition:
        pytest.fail(f"integration prerequisite missing: {message}", pytrace=False)


def lane_version() -> str:
    """The ComfyUI version this lane was set up for (COMFYUI_VERSION, exported by .ci/integration.sh)."""
    require(bool(COMFYUI_VERSION), "COMFYUI_VERSION is not set: run .ci/integration.sh, or export the KEY=VALUE "
                                   "lines that `.ci/setup_comfyui.py --version X` prints")
    return COMFYUI_VERSION


def comfyui_root() -> str:
    root = os.environ.get("COMFYUI_ROOT") or os.path.join(REPO_ROOT, ".cache", "comfyui", lane_version(), "ComfyUI")
    require(os.path.isfile(os.path.join(root, "main.py")),
            f"no ComfyUI at {root}: run `.venv/bin/python .ci/setup_comfyui.py --version X` (or set COMFYUI_ROOT)")
    return root


TINY_CHECKPOINTS = os.path.join(REPO_ROOT, ".cache", "tiny_checkpoints")


def tiny_checkpoint(variant: str, dit_folder: str = "diffusion_transformer_384p") -> str:
    """The built-in tiny random-weight checkpoint of ``variant`` in the official layout (built once, seeded).

    The lane makes its own models rather than borrowing a golden set, so a golden set of other sizes or folder
    names cannot change what the lane runs; its dimensions match TINY_TEXT_ENCODERS.
    """
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    from pyramid_flow.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(os.path.join(TINY_CHECKPOINTS, variant), variant, dit_folder=dit_folder)


def import_comfy():
    """Make ComfyUI importable in this process on CPU (real modules, no server)."""
    root = comfyui_root()
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (initialises devices with --cpu)

    return root


def tiny_text_encoder_state(file_name: str, seed: int = 0):
    """Random HF-initialised weights of one tiny text encoder, keyed like the real single files."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    model_name, config = TINY_TEXT_ENCODERS[file_name]
    torch.manual_seed(seed + len(file_name))
    if model_name == "t5xxl":
        model = T5EncoderModel(T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", **config))
    else:
        model = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                                           eos_token_id=49407, **config))
    skip = ("position_ids", "encoder.embed_tokens.weight")  # buffers / the tied copy of shared.weight
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if not k.endswith(skip)}


def write_tiny_text_encoders(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for file_name, (model_name, config) in TINY_TEXT_ENCODERS.items():
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            save_file(tiny_text_encoder_state(file_name), path)
            with open(path + ".json", "w", encoding="utf-8") as f:
                json.dump({"model_name": model_name, "config": config}, f)


def _link_repo(variant: str, target: str, stand_ins=("diffusion_transformer_768p",)) -> None:
    """The tiny checkpoint's folders linked into models/pyramidflow/<repo>/; the tiny 384p DiT also stands in for
    the DiT folders in ``stand_ins``."""
    source = tiny_checkpoint(variant)
    os.makedirs(target, exist_ok=True)
    for name in [*os.listdir(source), *stand_ins]:
        link = os.path.join(target, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(source, name if os.path.exists(os.path.join(source, name)) else
                                    "diffusion_transformer_384p"), link)


class Payload:
    """A pickled object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def write_hostile_models(models: str) -> None:
    """Broken and wrong files the bad-input tests pick through the real server: a VAE in the DiT folder, a
    .pkl (must not be listed), text encoders with pickled .bin weights, a DiT folder with a garbage config.json."""
    wrong = os.path.join(models, "diffusion_models", "not_a_pyramid_dit.safetensors")
    os.makedirs(os.path.dirname(wrong), exist_ok=True)
    if not os.path.isfile(wrong):
        shutil.copy(os.path.join(tiny_checkpoint("miniflux"), "causal_video_vae", "diffusion_pytorch_model.safetensors"), wrong)
    pickle_file = os.path.join(models, "diffusion_models", "pickled_object.pkl")
    if not os.path.isfile(pickle_file):
        torch.save({"weight": torch.zeros(1)}, pickle_file)
    source = tiny_checkpoint("miniflux")
    pickled = os.path.join(models, "pyramidflow", "pickled-text-encoders")
    if not os.path.isdir(pickled):
        for folder in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            shutil.copytree(os.path.join(source, folder), os.path.join(pickled, folder))
        os.remove(os.path.join(pickled, "text_encoder", "model.safetensors"))
        torch.save({"text_model.embeddings.token_embedding.weight": Payload()},
                   os.path.join(pickled, "text_encoder", "pytorch_model.bin"))
    garbage = os.path.join(models, "pyramidflow", "broken-config", "diffusion_transformer_384p")
    if not os.path.isdir(garbage):
        os.makedirs(garbage)
        os.symlink(os.path.join(source, "diffusion_transformer_384p", "diffusion_pytorch_model.safetensors"),
                   os.path.join(garbage, "diffusion_pytorch_model.safetensors"))
        with open(os.path.join(garbage, "config.json"), "w", encoding="utf-8") as f:
            f.write("{ not json")


def write_example_image(path: str) -> None:
    """A 320x200 RGB gradient (not the video's aspect ratio, so the resize path is exercised)."""
    from PIL import Image

    x = torch.linspace(0, 255, 320).to(torch.uint8)
    y = torch.linspace(0, 255, 200).to(torch.uint8)
    pixels = torch.stack([x[None].expand(200, -1), y[:, None].expand(-1, 320), torch.full((200, 320), 90, dtype=torch.uint8)], -1)
    Image.fromarray(pixels.numpy()).save(path)


def write_example_video(path: str, frames: int = 19) -> None:
    """A short moving gradient (19 frames: the extension node trims it to 17 = 1 + 8k) at 200x136, not a multiple
    of 64, so the crop path is exercised."""
    from pyramid_flow.video_io import write_mp4

    x = torch.linspace(0, 255, 200)[None].expand(136, -1)
    video = torch.stack([torch.stack([(x + 9 * t) % 256, x.flip(1), torch.full_like(x, 40.0)], -1)
                         for t in range(frames)]).to(torch.uint8)
    write_mp4(video, path)


def build_base_dir(base: str) -> str:
    """A ComfyUI --base-directory: the pack and the testing pack linked into custom_nodes, tiny models."""
    for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for name, source in ((PACK_DIR_NAME, REPO_ROOT), (TESTING_PACK_NAME, os.path.join(HERE, "testing_pack"))):
        link = os.path.join(base, "custom_nodes", name)
        if not os.path.lexists(link):
            os.symlink(source, link)
    models = os.path.join(base, "models")
    tiny_checkpoint("miniflux", "diffusion_transformer_image")  # the text-to-image DiT, in the same tiny folder
    _link_repo("miniflux", os.path.join(models, "pyramidflow", "pyramid-flow-miniflux"))
    # SD3's 768p stays missing: the lane asks for it with download_if_missing and no network
    _link_repo("sd3", os.path.join(models, "pyramidflow", "pyramid-flow-sd3"), stand_ins=())
    write_tiny_text_encoders(os.path.join(models, "text_encoders"))
    write_hostile_models(models)
    image = os.path.join(base, "input", "pyramid_flow_example.png")
    if not os.path.isfile(image):
        write_example_image(image)
    video = os.path.join(base, "input", "pyramid_flow_example.mp4")
    if not os.path.isfile(video):
        write_example_video(video)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A real ComfyUI server process on CPU, driven over HTTP."""

    def __init__(self, base: str, extra_args=()):
        self.root = comfyui_root()
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "server.log")
        self.client_id = uuid.uuid4().hex
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", base, "--disable-auto-launch", "--preview-method", "latent2rgb",
               "--database-url", "sqlite:///:memory:", *extra_args]
        self.log = open(self.log_path, "w", encoding="utf-8")
        # HF_HUB_OFFLINE: the lane never reaches the Hub; download_if_missing then meets a clear offline error
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.read_log()[-5000:]}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.read_log()[-5000:]}")

    def read_log(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)

    def get(self, path: str):
        status, body = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {body}")
        return body

    def queue(self, prompt: dict):
        """POST /prompt; returns (status, body)."""
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue and wait; returns the /history entry (status may be success or error)."""
        status, body = self.queue(prompt)
        assert status == 200, f"prompt rejected ({status}): {json.dumps(body)[:3000]}"
        return self.wait(body["prompt_id"], timeout)

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.read_log()[-5000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.read_log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def error_message(entry: dict) -> str:
    """The execution_error text of a failed /history entry."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return ""


def output_files(entry: dict, base: str):
    """Paths of every file the prompt's output nodes report (images/videos/tensors)."""
    paths = []
    for outputs in entry.get("outputs", {}).values():
        for items in outputs.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    paths.append(os.path.join(base, "output", item.get("subfolder", ""), item["filename"]))
    return paths
