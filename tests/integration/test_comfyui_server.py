"""The pack inside a real ComfyUI server (CPU, the lane's version): import, /object_info, prompts to video files, errors,
and the nodes' frames against pyramid_flow called directly."""

import json
import os
import subprocess
import sys

import av
import pytest
import torch
from safetensors.torch import load_file

import harness
from prompts import NEGATIVE, PROMPT, TINY, video_prompt
from tolerance import assert_within_ulps

NODES = {
    # use_ema and device: added last, optional, so workflows saved before them load
    "PyramidFlowVideoModelLoader": (["model", "weight_dtype", "download_if_missing", "use_ema", "device"],
                                    ["PYRAMID_FLOW_VIDEO_MODEL"]),
    "PyramidFlowVideoVAELoader": (["vae", "dtype", "download_if_missing", "device"], ["PYRAMID_FLOW_VIDEO_VAE"]),
    "PyramidFlowVideoTextEncoderLoader": (["model_folder", "dtype", "download_if_missing", "device"],
                                          ["PYRAMID_FLOW_VIDEO_TEXT_ENCODER"]),
    "PyramidFlowVideoMultiGPU": (["model", "max_gpus"], ["PYRAMID_FLOW_VIDEO_MODEL"]),
    "PyramidFlowVideoTextEncode": (["prompt", "negative_prompt", "add_quality_suffix", "clip", "text_encoder"],
                                   ["CONDITIONING", "CONDITIONING"]),
    "PyramidFlowVideoPromptSchedule": (["schedule", "negative_prompt", "add_quality_suffix", "clip", "text_encoder"],
                                       ["CONDITIONING", "CONDITIONING"]),
    "PyramidFlowVideoImageToVideo": (["vae", "image", "width", "height", "resize_mode"], ["LATENT"]),
    "PyramidFlowVideoSampler": (["model", "positive", "negative", "width", "height", "duration_seconds",
                                 "first_frame_steps_1", "first_frame_steps_2", "first_frame_steps_3",
                                 "video_steps_1", "video_steps_2", "video_steps_3", "guidance_scale",
                                 "video_guidance_scale", "seed", "image_latent", "noise", "history_window"],
                                ["LATENT", "INT"]),
    "PyramidFlowVideoExtend": (["model", "positive", "negative", "duration_seconds", "video_steps_1", "video_steps_2",
                                "video_steps_3", "guidance_scale", "video_guidance_scale", "seed", "video", "images",
                                "vae", "noise", "history_window"], ["LATENT", "LATENT", "INT"]),
    "PyramidFlowVideoVAEDecode": (["vae", "samples", "tile_size", "tile_overlap", "temporal_window"], ["IMAGE"]),
    "PyramidFlowVideoVAEEncode": (["vae", "images", "tile_size", "tile_overlap", "temporal_window"], ["LATENT"]),
}


def combo_options(spec) -> list:
    """The options of a combo input in /object_info (V1 lists them first, V3 as 'COMBO' with an options field)."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def video_frames(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate)


def test_quick_test_for_ci_imports_the_pack(base_dir):
    root = harness.comfyui_root()
    out = subprocess.run([sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", base_dir,
                          "--database-url", "sqlite:///:memory:"],
                         cwd=root, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-4000:]
    assert harness.PACK_DIR_NAME in log, "the pack is missing from ComfyUI's custom node import table"


def test_object_info_lists_every_node(server):
    info = server.get("/object_info")
    for node_id, (inputs, outputs) in NODES.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        order = node["input_order"]
        assert order.get("required", []) + order.get("optional", []) == inputs, node_id
        assert node["output"] == outputs, node_id
        assert node["category"].startswith("PyramidFlow/"), node_id
        assert node["description"], node_id
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    sampler = info["PyramidFlowVideoSampler"]["input"]["required"]
    assert sampler["width"][1]["step"] == 64 and sampler["height"][1]["step"] == 64
    assert sampler["seed"][1]["control_after_generate"] is True
    assert "121 frames" in sampler["duration_seconds"][1]["tooltip"]
    models = combo_options(info["PyramidFlowVideoModelLoader"]["input"]["required"]["model"])
    assert "pyramid-flow-miniflux/diffusion_transformer_384p" in models
    assert "pyramid-flow-miniflux/diffusion_transformer_image" in models
    assert "pyramid-flow-sd3/diffusion_transformer_384p" in models
    assert "not_a_pyramid_dit.safetensors" in models and "pickled_object.pkl" not in models  # only formats that load
    optional = info["PyramidFlowVideoSampler"]["input"]["optional"]
    assert combo_options(optional["noise"]) == ["default", "official"] and optional["history_window"][1]["default"] == 0


@pytest.mark.parametrize("variant", ["miniflux", "sd3"])
def test_t2v_with_core_style_clip_writes_video(server, base_dir, variant):
    entry = server.run(video_prompt(variant, "clip", prefix=f"t2v_{variant}"))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    videos = [p for p in harness.output_files(entry, base_dir) if p.endswith((".mp4", ".webm", ".mov"))]
    assert videos and os.path.getsize(videos[0]) > 0
    frames, fps = video_frames(videos[0])
    assert len(frames) == 9 and frames[0].shape == (128, 128, 3) and fps == 24


def test_i2v_writes_video(server, base_dir):
    entry = server.run(video_prompt("miniflux", "clip", prefix="i2v", i2v=True, duration_seconds=0.7))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    videos = [p for p in harness.output_files(entry, base_dir) if p.endswith(".mp4")]
    frames, _ = video_frames(videos[0])
    assert len(frames) == 17


@pytest.mark.parametrize("variant", ["miniflux", "sd3"])
def test_nodes_equal_pyramid_flow_direct(server, base_dir, variant):
    """Same seed, same encoders (transformers loader), fp32 CPU: the nodes add no drift."""
    from pyramid_flow import latents as latent_utils
    from pyramid_flow.pipeline import PyramidFlowPipeline
    from pyramid_flow.vae import SAVE_MEMORY_DECODE

    name = f"direct_{variant}"
    entry = server.run(video_prompt(variant, "transformers", prefix=name, save_tensors=name))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    saved = load_file(os.path.join(base_dir, "output", f"{name}.safetensors"))

    root = os.path.join(base_dir, "models", "pyramidflow", f"pyramid-flow-{variant}")
    pipe = PyramidFlowPipeline.from_pretrained(root, "diffusion_transformer_384p", device="cpu", dtype=torch.float32)
    steps = [TINY[f"first_frame_steps_{i}"] for i in (1, 2, 3)]
    video_steps = [TINY[f"video_steps_{i}"] for i in (1, 2, 3)]
    latents = pipe.generate(PROMPT, height=TINY["height"], width=TINY["width"], temp=2, num_inference_steps=steps,
                            video_num_inference_steps=video_steps, guidance_scale=TINY["guidance_scale"],
                            video_guidance_scale=TINY["video_guidance_scale"], negative_prompt=NEGATIVE,
                            seed=TINY["seed"], output_type="latent")
    raw = latent_utils.denormalize(latents, pipe.variant)
    # another process, and the nodes attend through ComfyUI's optimized_attention (SDPA via comfy.ops) where the
    # direct call uses torch's SDPA: float rounding that two sampled units carry, not bit equality
    assert_within_ulps(saved["latent"], raw, ulps=64, name="latent")
    video = pipe.vae.decode(raw, temporal_chunk=True, window_size=1, tile_sample_min_size=256)
    images = ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).flatten(0, 1)
    # the node decodes through comfy.ops convolutions (torch picks the kernel), the direct call through
    # pyramid_flow.ops (oneDNN): last-bit differences grow through the decoder's ~30 convolutions
    assert_within_ulps(saved["images"], images, ulps=64, name="images")
    # and the official uint8 frames agree with the node images to within one level (truncation), plus the
    # last-bit differences of the two decodes scaled to 0..255
    direct_uint8 = pipe.decode(latents, SAVE_MEMORY_DECODE).float()
    assert (saved["images"] * 255 - direct_uint8).abs().max() <= 1.0 + 255 * 64 * 1.2e-7


def _image_latent(prompt: dict, size: int, batch: bool = False) -> dict:
    """Example image -> ImageScale(size) -> Pyramid Flow VAE Encode (-> LatentBatch with itself) as the sampler's
    image_latent."""
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "pyramid_flow_example.png"}}
    prompt["21"] = {"class_type": "ImageScale", "inputs": {"image": ["20", 0], "upscale_method": "bilinear",
                                                            "width": size, "height": size, "crop": "center"}}
    prompt["22"] = {"class_type": "PyramidFlowVideoVAEEncode",
                    "inputs": {"vae": ["4", 0], "images": ["21", 0], "tile_size": 256, "tile_overlap": 0.25,
                               "temporal_window": 2}}
    source = ["22", 0]
    if batch:
        prompt["23"] = {"class_type": "LatentBatch", "inputs": {"samples1": ["22", 0], "samples2": ["22", 0]}}
        source = ["23", 0]
    prompt["5"]["inputs"]["image_latent"] = source
    return prompt


def _with(prompt: dict, node: str, **inputs) -> dict:
    prompt[node]["inputs"].update(inputs)
    return prompt


NAN = float("nan")
# (name, prompt, fragments the error message must hold); every prompt fails before heavy work
HOSTILE = [
    ("bad_width", lambda: video_prompt(prefix="bad_width", width=100, seed=1),
     ["width 100 is not a multiple of 64", "Use 64 or 128"]),
    ("vae_as_dit", lambda: video_prompt(prefix="bad_file", dit="not_a_pyramid_dit.safetensors", seed=2),
     ["not_a_pyramid_dit.safetensors", "not a usable Pyramid Flow DiT", "'Pyramid Flow VAE Loader'"]),
    ("nan_video_guidance", lambda: video_prompt(prefix="nan_vg", video_guidance_scale=NAN, seed=3),
     ["'video_guidance_scale' is nan", "finite number"]),
    ("nan_guidance", lambda: video_prompt(prefix="nan_g", guidance_scale=NAN, seed=3), ["'guidance_scale' is nan"]),
    ("nan_duration", lambda: video_prompt(prefix="nan_d", duration_seconds=NAN, seed=3), ["'duration_seconds' is nan"]),
    ("nan_tile_overlap", lambda: _with(video_prompt(prefix="nan_o", seed=3), "6", tile_overlap=NAN),
     ["'tile_overlap' is nan"]),
    ("pickled_text_encoder", lambda: video_prompt("miniflux", "transformers", prefix="pickled", seed=3,
                                                  text_folder="pickled-text-encoders"),
     ["pytorch_model.bin", "Only safe formats load"]),
    ("garbage_config", lambda: video_prompt(prefix="garbage", dit="broken-config/diffusion_transformer_384p", seed=3),
     ["config.json' is not valid JSON", "Download it again"]),
    ("offline_download", lambda: _with(video_prompt("sd3", prefix="offline", seed=3,
                                                    dit="pyramid-flow-sd3/diffusion_transformer_768p"),
                                       "3", download_if_missing=True),
     ["Hugging Face Hub could not be reached", "hf download rain1011/pyramid-flow-sd3"]),
    ("image_latent_size", lambda: _image_latent(video_prompt(prefix="latent72", seed=3), 72),
     ["72x72 comes from 'image_latent'", "not a multiple of 64"]),
    ("tiny_tiles", lambda: _with(video_prompt(prefix="tiles", seed=3), "6", tile_size=8),
     ["Use a larger tile size"]),
    ("one_pixel_image", lambda: _with(_image_latent(video_prompt(prefix="pixel", seed=3), 128), "21", width=1, height=1),
     ["The input 'images' is 1x1 pixels; it needs at least 8x8"]),
]


# (name, prompt, fragments of the refusal): combo values outside a node's options, refused when queued (HTTP 400,
# the node's validate_inputs; ComfyUI 0.3.75 does not check V3 combos itself) for the right reason.
REFUSED_AT_QUEUE = [
    ("missing_model", lambda: video_prompt(prefix="q1", dit="no_such_model.safetensors"),
     ["'no_such_model.safetensors' not found: expected models/pyramidflow/"]),
    ("repository_as_dit", lambda: video_prompt(prefix="q2", dit="pyramid-flow-miniflux"),
     ["is a model repository folder, not a DiT", "pyramid-flow-miniflux/diffusion_transformer_384p"]),
    ("folder_named_like_a_file", lambda: video_prompt(prefix="q3", dit="a_folder.safetensors"),
     ["'a_folder.safetensors' in models/diffusion_models/ is a folder, not a weight file"]),
    ("fp16_weights", lambda: video_prompt(prefix="q4", weight_dtype="fp16"), ["fp16 gives black or NaN videos"]),
    ("unknown_noise", lambda: video_prompt(prefix="q5", noise="philox"), ["'philox' is not an option of 'noise'"]),
]


@pytest.mark.parametrize("name,make,fragments", REFUSED_AT_QUEUE, ids=[case[0] for case in REFUSED_AT_QUEUE])
def test_options_outside_the_list_are_refused_at_queue_time(server, base_dir, name, make, fragments):
    os.makedirs(os.path.join(base_dir, "models", "diffusion_models", "a_folder.safetensors"), exist_ok=True)
    status, body = server.queue(make())
    text = json.dumps(body)
    assert status == 400, (name, status, text[:2000])
    for fragment in fragments:
        assert fragment in text, text[:3000]


@pytest.mark.parametrize("name,make,fragments", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_bad_inputs_fail_clearly(server, name, make, fragments):
    entry = server.run(make())
    assert entry["status"]["status_str"] == "error", name
    message = harness.error_message(entry)
    for fragment in fragments:
        assert fragment in message, message
    exception_type = message.split(":", 1)[0]
    assert "custom_nodes" not in exception_type and "_x_" not in exception_type, exception_type  # a short type name


def test_valid_edge_inputs_work_and_the_server_keeps_serving(server, base_dir):
    """A 7000x10 image padded into the video and a batch of two image latents (the first is used) both run."""
    wide = video_prompt("miniflux", "clip", prefix="pad_extreme", i2v=True, seed=4)
    wide["30"] = {"class_type": "ImageScale", "inputs": {"image": ["9", 0], "upscale_method": "nearest-exact",
                                                          "width": 7000, "height": 10, "crop": "disabled"}}
    wide["10"]["inputs"].update(image=["30", 0], resize_mode="pad")
    for prompt in (wide, _image_latent(video_prompt(prefix="latent_batch", seed=5), 128, batch=True)):
        entry = server.run(prompt)
        assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    assert "first one is used" in server.read_log()
    assert server.get("/system_stats")["system"]["comfyui_version"] == harness.lane_version()


def test_interrupt_stops_sampling(server):
    import threading
    import time

    long = video_prompt(prefix="interrupted", seed=5, duration_seconds=10.0, first_frame_steps_1=50,
                        first_frame_steps_2=50, first_frame_steps_3=50, video_steps_1=20)
    status, body = server.queue(long)
    assert status == 200, body
    prompt_id = body["prompt_id"]

    def interrupt_when_sampling():
        deadline = time.time() + 120
        while time.time() < deadline:
            queue = server.get("/queue")
            if any(item[1] == prompt_id for item in queue["queue_running"]):
                time.sleep(3)
                server.request("POST", "/interrupt", {})
                return
            time.sleep(0.2)

    thread = threading.Thread(target=interrupt_when_sampling)
    thread.start()
    started = time.time()
    entry = server.wait(prompt_id, timeout=300)
    thread.join()
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert time.time() - started < 120
    entry = server.run(video_prompt(prefix="after_interrupt", seed=6))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)


def test_vae_encode_then_save_and_extend(server, base_dir):
    """Image -> Pyramid Flow VAE Encode -> core SaveLatent (a .latent file), and the same latent as the first frame
    of an image-to-video run (the 'extend later' path without moments)."""
    prompt = video_prompt("miniflux", "clip", prefix="from_encoded_latent", seed=7)
    prompt["9"] = {"class_type": "LoadImage", "inputs": {"image": "pyramid_flow_example.png"}}
    prompt["12"] = {"class_type": "ImageScale", "inputs": {"image": ["9", 0], "upscale_method": "bilinear",
                                                            "width": 128, "height": 128, "crop": "center"}}
    prompt["13"] = {"class_type": "PyramidFlowVideoVAEEncode",
                    "inputs": {"vae": ["4", 0], "images": ["12", 0], "tile_size": 256, "tile_overlap": 0.25,
                               "temporal_window": 2}}
    prompt["14"] = {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": "latents/pf"}}
    prompt["5"]["inputs"]["image_latent"] = ["13", 0]
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    files = harness.output_files(entry, base_dir)
    latent_files = [p for p in files if p.endswith(".latent")]
    assert latent_files and load_file(latent_files[0])["latent_tensor"].shape == (1, 16, 1, 16, 16)
    videos = [p for p in files if p.endswith(".mp4")]
    frames, _ = video_frames(videos[0])
    assert len(frames) == 9


@pytest.mark.long
def test_long_videos_with_a_history_window(server):
    """30 s at 384p and 20 s at 768p (tiny models, one step per stage): beyond the trained 10 s, with a bounded
    history; every frame is decoded (reported by a test node instead of an mp4 encoder, which would take minutes)."""
    steps = {f"{kind}_{i}": 1 for kind in ("first_frame_steps", "video_steps") for i in (1, 2, 3)}
    for name, width, height, seconds, frames in (("long_384p", 640, 384, 30.0, 721), ("long_768p", 1280, 768, 20.0, 481)):
        prompt = video_prompt(prefix=name, width=width, height=height, duration_seconds=seconds, history_window=8,
                              seed=11, **steps)
        prompt["6"]["inputs"]["tile_size"] = 0  # whole frames: tiling is not what this test is about
        for node in ("7", "8"):  # CreateVideo -> SaveVideo
            del prompt[node]
        prompt["7"] = {"class_type": "PyramidFlowTest_FrameInfo", "inputs": {"images": ["6", 0]}}
        entry = server.run(prompt, timeout=1800)
        assert entry["status"]["status_str"] == "success", harness.error_message(entry)
        info = entry["outputs"]["7"]["frame_info"][0]
        assert info["shape"] == [frames, height, width, 3] and info["finite"] and 0 <= info["min"] <= info["max"] <= 1


def test_a_server_killed_mid_run_resumes_the_same_prompt_after_a_restart(server, tmp_path_factory):
    """SIGKILL of the ComfyUI server while the sampler runs; started again, the same prompt queued again continues
    after the kept frames (under the user directory: ComfyUI wipes its temp folder at start) and gives what an
    uninterrupted run gives."""
    import signal
    import time

    base = harness.build_base_dir(str(tmp_path_factory.mktemp("restart_base")))
    slow = {f"video_steps_{i}": 12 for i in (1, 2, 3)}
    prompt = video_prompt(prefix="restart", seed=31, duration_seconds=3.0, save_tensors="restarted", **slow)
    states = os.path.join(base, "user", "pyramid_flow_resume")

    def kept() -> int:
        folders = [os.path.join(states, name) for name in os.listdir(states)] if os.path.isdir(states) else []
        return max((len([f for f in os.listdir(d) if f.startswith("frame_")]) for d in folders), default=0)

    first = harness.ComfyServer(base)
    try:
        status, body = first.queue(prompt)
        assert status == 200, body
        deadline = time.monotonic() + 300
        while kept() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    assert 3 <= kept() < 10, "the kill did not land mid-run"
    second = harness.ComfyServer(base)
    try:
        entry = second.run(prompt)
        assert entry["status"]["status_str"] == "success", harness.error_message(entry)
        assert "Resuming:" in second.read_log() and "latent frames of a stopped run" in second.read_log()
    finally:
        second.stop()
    assert kept() == 0  # cleared on completion
    reference = server.run(video_prompt(prefix="restart_ref", seed=31, duration_seconds=3.0,
                                        save_tensors="restart_reference", **slow))
    assert reference["status"]["status_str"] == "success", harness.error_message(reference)
    resumed = load_file(os.path.join(base, "output", "restarted.safetensors"))["latent"]
    expected = load_file(os.path.join(server.base, "output", "restart_reference.safetensors"))["latent"]
    assert (resumed - expected).abs().max().item() <= 1e-6
