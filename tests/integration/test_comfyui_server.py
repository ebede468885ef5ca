"""The pack inside a real ComfyUI server (CPU, the lane's version): import, /object_info, prompts to video files, errors,
and the nodes' frames against pyramid_flow called directly."""

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
    "PyramidFlowVideoModelLoader": (["model", "weight_dtype", "download_if_missing"], ["PYRAMID_FLOW_VIDEO_MODEL"]),
    "PyramidFlowVideoVAELoader": (["vae", "dtype", "download_if_missing"], ["PYRAMID_FLOW_VIDEO_VAE"]),
    "PyramidFlowVideoTextEncoderLoader": (["model_folder", "dtype", "download_if_missing"],
                                          ["PYRAMID_FLOW_VIDEO_TEXT_ENCODER"]),
    "PyramidFlowVideoTextEncode": (["prompt", "negative_prompt", "add_quality_suffix", "clip", "text_encoder"],
                                   ["CONDITIONING", "CONDITIONING"]),
    "PyramidFlowVideoImageToVideo": (["vae", "image", "width", "height", "resize_mode"], ["LATENT"]),
    "PyramidFlowVideoSampler": (["model", "positive", "negative", "width", "height", "duration_seconds",
                                 "first_frame_steps_1", "first_frame_steps_2", "first_frame_steps_3",
                                 "video_steps_1", "video_steps_2", "video_steps_3", "guidance_scale",
                                 "video_guidance_scale", "seed", "image_latent"], ["LATENT", "INT"]),
    "PyramidFlowVideoVAEDecode": (["vae", "samples", "tile_size", "tile_overlap", "temporal_window"], ["IMAGE"]),
    "PyramidFlowVideoVAEEncode": (["vae", "images", "tile_size", "tile_overlap", "temporal_window"], ["LATENT"]),
}


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
    models = info["PyramidFlowVideoModelLoader"]["input"]["required"]["model"][0]
    assert "pyramid-flow-miniflux/diffusion_transformer_384p" in models
    assert "pyramid-flow-sd3/diffusion_transformer_384p" in models


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
    from pyramid_flow.pipeline import PyramidFlowPipeline
    from pyramid_flow import latents as latent_utils

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
    # another process, the same code: a few ulps, not bit equality
    assert_within_ulps(saved["latent"], raw, name="latent")
    video = pipe.vae.decode(raw, temporal_chunk=True, window_size=1, tile_sample_min_size=256)
    images = ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).flatten(0, 1)
    assert_within_ulps(saved["images"], images, name="images")
    # and the official uint8 frames agree with the node images to within one level
    direct_uint8 = pipe.decode(latents, 1, 256).float()
    assert (saved["images"] * 255 - direct_uint8).abs().max() <= 1.0


def test_bad_prompts_fail_clearly_and_server_keeps_serving(server, base_dir):
    entry = server.run(video_prompt(prefix="bad_width", width=100, seed=1))
    assert entry["status"]["status_str"] == "error"
    message = harness.error_message(entry)
    assert "width 100 is not a multiple of 64" in message and "Use 64 or 128" in message, message

    entry = server.run(video_prompt(prefix="bad_file", dit="not_a_pyramid_dit.safetensors", seed=2))
    assert entry["status"]["status_str"] == "error"
    message = harness.error_message(entry)
    assert "not_a_pyramid_dit.safetensors" in message and "not a usable Pyramid Flow DiT" in message, message

    status, body = server.queue(video_prompt(prefix="bad_model", dit="no_such_model.safetensors", seed=3))
    assert status == 400 and "no_such_model.safetensors" in str(body)

    assert server.get("/system_stats")["system"]["comfyui_version"] == harness.lane_version()
    entry = server.run(video_prompt(prefix="after_errors", seed=4))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)


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
