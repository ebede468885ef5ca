"""Write the example workflows (UI format 0.4) into workflows/ from the compact definitions below.

The JSON files in workflows/ are what users load and what ComfyUI serves as templates; this script is how they
are (re)generated when a node's inputs change, so widget order always follows INPUT_TYPES. The integration
lane checks the files against the live /object_info and runs every one of them in the real frontend.

    .venv/bin/python .ci/build_workflows.py [--check]
"""

import argparse
import json
import os
import sys
import uuid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from pyramid_flow.pipeline import DEFAULT_NEGATIVE_PROMPT as DEFAULT_NEGATIVE  # noqa: E402
OUT = os.path.join(REPO_ROOT, "workflows")
PACK_ID, PACK_VER = "pyramid-flow-video", "0.1.0"
CORE_VER = "0.3.75"
FRONTEND = "1.32.9"
HF = "https://huggingface.co"

TEXT_ENCODER_FILES = {
    "clip_l.safetensors": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    "t5xxl_fp16.safetensors": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
    "clip_g.safetensors": f"{HF}/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/text_encoders/clip_g.safetensors",
}
# socket inputs (name, type, optional) and outputs (name, type) of every node type used
SOCKETS = {
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "TripleCLIPLoader": ([], [("CLIP", "CLIP")]),
    "PyramidFlowVideoTextEncode": ([("clip", "CLIP", True), ("text_encoder", "PYRAMID_FLOW_VIDEO_TEXT_ENCODER", True)],
                                   [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "PyramidFlowVideoModelLoader": ([], [("model", "PYRAMID_FLOW_VIDEO_MODEL")]),
    "PyramidFlowVideoVAELoader": ([], [("vae", "PYRAMID_FLOW_VIDEO_VAE")]),
    "PyramidFlowVideoSampler": ([("model", "PYRAMID_FLOW_VIDEO_MODEL", False), ("positive", "CONDITIONING", False),
                                 ("negative", "CONDITIONING", False), ("image_latent", "LATENT", True)],
                                [("latent", "LATENT"), ("frames", "INT")]),
    "PyramidFlowVideoVAEDecode": ([("vae", "PYRAMID_FLOW_VIDEO_VAE", False), ("samples", "LATENT", False)],
                                  [("images", "IMAGE")]),
    "PyramidFlowVideoImageToVideo": ([("vae", "PYRAMID_FLOW_VIDEO_VAE", False), ("image", "IMAGE", False)],
                                     [("image_latent", "LATENT")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "CreateVideo": ([("images", "IMAGE", False), ("audio", "AUDIO", True)], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO", False)], []),
    "Note": ([], []),
}


def hf_file(repo: str, path: str) -> str:
    return f"{HF}/{repo}/resolve/main/{path}"


def folder_models(repo_folder: str, component: str):
    """properties.models for a component folder of rain1011/<repo> (config + weights)."""
    directory = f"pyramidflow/{repo_folder}/{component}"
    return [{"name": name, "url": hf_file(f"rain1011/{repo_folder}", f"{component}/{name}"), "directory": directory}
            for name in ("config.json", "diffusion_pytorch_model.safetensors")]


def note_text(variant: str, resolution: str, i2v: bool) -> str:
    repo = f"pyramid-flow-{variant}"
    te = ("clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors (the SD3 text encoders; "
          "TripleCLIPLoader)" if variant == "sd3" else
          "clip_l.safetensors, t5xxl_fp16.safetensors (the Flux text encoders; DualCLIPLoader type flux)")
    vram = {"384p": "about 8 GB for 5 s at 640x384", "768p": "about 12-16 GB for 10 s at 1280x768"}[resolution]
    lines = [
        f"Pyramid Flow {variant} {resolution} {'image' if i2v else 'text'}-to-video",
        "",
        "Files (or switch on download_if_missing in the loaders to fetch the rain1011 folders):",
        f"- ComfyUI/models/pyramidflow/{repo}/diffusion_transformer_{resolution}/ (config.json + "
        "diffusion_pytorch_model.safetensors from https://huggingface.co/rain1011/" + repo + ")",
        f"- ComfyUI/models/pyramidflow/{repo}/causal_video_vae/ (same repository)",
        f"- ComfyUI/models/text_encoders/: {te}. Already have them for Flux/SD3? They are reused as is.",
        "",
        f"VRAM (estimate, bf16 weights, ComfyUI offloads what does not fit): {vram}. Less works, slower, through "
        "ComfyUI's partial loading; fp8_e4m3fn weights halve the DiT. If decoding runs out of memory, lower "
        "tile_size in the VAE Decode node (it also retries smaller tiles by itself).",
        "",
        "Output: 24 fps; frames = 8 * latent frames - 7 (5 s = 121 frames, 10 s = 241).",
    ]
    if i2v:
        lines += ["", "Load your first frame in Load Image. It is resized to the video size keeping its aspect "
                      "ratio (crop or pad), never squashed."]
    return "\n".join(lines)


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, pos, widgets, size=(320, 130), title=None, models=None):
        inputs, outputs = SOCKETS[node_type]
        node = {
            "id": len(self.nodes) + 1, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
            "order": len(self.nodes), "mode": 0,
            "inputs": [dict({"name": n, "type": t, "link": None}, **({"shape": 7} if opt else {}))
                       for n, t, opt in inputs],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type} if node_type != "Note" else {"text": ""},
            "widgets_values": list(widgets),
        }
        if node_type != "Note":
            pack = node_type.startswith("PyramidFlow")
            node["properties"].update({"cnr_id": PACK_ID if pack else "comfy-core",
                                       "ver": PACK_VER if pack else CORE_VER})
        else:
            node["color"], node["bgcolor"] = "#432", "#653"
        if title:
            node["title"] = title
        if models:
            node["properties"]["models"] = models
        self.nodes.append(node)
        return node["id"]

    def link(self, src, src_slot, dst, dst_input):
        src_node, dst_node = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, inp in enumerate(dst_node["inputs"]) if inp["name"] == dst_input)
        link_id = len(self.links) + 1
        link_type = src_node["outputs"][src_slot]["type"]
        self.links.append([link_id, src, src_slot, dst, slot, link_type])
        src_node["outputs"][src_slot]["links"].append(link_id)
        dst_node["inputs"][slot]["link"] = link_id

    def to_json(self, name):
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/workflows/{name}")), "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}, "frontendVersion": FRONTEND}, "version": 0.4,
        }


def workflow(name, variant, resolution, seconds, i2v, prompt, seed):
    repo = f"pyramid-flow-{variant}"
    width, height = (640, 384) if resolution == "384p" else (1280, 768)
    guidance = 7.0 if resolution == "384p" else 9.0
    video_guidance = 4.0 if i2v else 5.0
    g = Graph()
    if variant == "sd3":
        files = ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"]
        clip = g.add("TripleCLIPLoader", (0, 0), files, size=(400, 130),
                     models=[{"name": f, "url": TEXT_ENCODER_FILES[f], "directory": "text_encoders"} for f in files])
    else:
        files = ["clip_l.safetensors", "t5xxl_fp16.safetensors"]
        clip = g.add("DualCLIPLoader", (0, 0), files + ["flux", "default"], size=(400, 130),
                     models=[{"name": f, "url": TEXT_ENCODER_FILES[f], "directory": "text_encoders"} for f in files])
    text = g.add("PyramidFlowVideoTextEncode", (440, 0), [prompt, DEFAULT_NEGATIVE, True], size=(420, 330))
    model = g.add("PyramidFlowVideoModelLoader", (0, 180), [f"{repo}/diffusion_transformer_{resolution}", "bf16", False],
                  size=(400, 110), models=folder_models(repo, f"diffusion_transformer_{resolution}"))
    vae = g.add("PyramidFlowVideoVAELoader", (0, 330), [f"{repo}/causal_video_vae", "auto", False], size=(400, 110),
                models=folder_models(repo, "causal_video_vae"))
    sampler = g.add("PyramidFlowVideoSampler", (900, 0),
                    [width, height, seconds, 20, 20, 20, 10, 10, 10, guidance, video_guidance, seed, "fixed"],
                    size=(340, 470))
    decode = g.add("PyramidFlowVideoVAEDecode", (1280, 0), [256, 0.25, 1], size=(320, 130))
    create = g.add("CreateVideo", (1280, 180), [24], size=(270, 80))
    save = g.add("SaveVideo", (1280, 300), [f"video/pyramid_flow_{variant}_{resolution}", "auto", "auto"],
                 size=(420, 480))
    g.add("Note", (440, 380), [note_text(variant, resolution, i2v)], size=(420, 420),
          title="Pyramid Flow: files and VRAM")
    g.link(clip, 0, text, "clip")
    g.link(model, 0, sampler, "model")
    g.link(text, 0, sampler, "positive")
    g.link(text, 1, sampler, "negative")
    g.link(vae, 0, decode, "vae")
    g.link(sampler, 0, decode, "samples")
    g.link(decode, 0, create, "images")
    g.link(create, 0, save, "video")
    if i2v:
        image = g.add("LoadImage", (0, 480), ["pyramid_flow_example.png", "image"], size=(400, 330))
        cond = g.add("PyramidFlowVideoImageToVideo", (0, 850), [width, height, "crop"], size=(400, 150))
        g.link(vae, 0, cond, "vae")
        g.link(image, 0, cond, "image")
        g.link(cond, 0, sampler, "image_latent")
    return g.to_json(name)


WORKFLOWS = {
    "pyramid_flow_miniflux_t2v_384p_5s": ("miniflux", "384p", 5.0, False,
                                          "A movie trailer featuring the adventures of the 30 year old space man "
                                          "wearing a red wool knitted motorcycle helmet, blue sky, salt desert, "
                                          "cinematic style, shot on 35mm film, vivid colors", 42),
    "pyramid_flow_miniflux_t2v_768p_10s": ("miniflux", "768p", 10.0, False,
                                           "Beautiful, snowy Tokyo city is bustling. The camera moves through the "
                                           "bustling city street, following several people enjoying the beautiful "
                                           "snowy weather and shopping at nearby stalls", 42),
    "pyramid_flow_miniflux_i2v_384p": ("miniflux", "384p", 5.0, True,
                                       "FPV flying over the Great Wall", 42),
    "pyramid_flow_miniflux_i2v_768p": ("miniflux", "768p", 5.0, True,
                                       "FPV flying over the Great Wall", 42),
    "pyramid_flow_sd3_t2v_384p_5s": ("sd3", "384p", 5.0, False,
                                     "A side profile shot of a woman with fireworks exploding in the distance "
                                     "beyond her", 42),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if workflows/ differs from the definitions")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    stale = []
    for name, spec in WORKFLOWS.items():
        text = json.dumps(workflow(name, *spec), indent=2) + "\n"
        path = os.path.join(OUT, name + ".json")
        current = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if current != text:
            stale.append(path)
            if not args.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    if args.check and stale:
        sys.exit(f"stale workflows (run .ci/build_workflows.py): {stale}")
    print(("checked " if args.check else "wrote ") + ", ".join(sorted(WORKFLOWS)))


if __name__ == "__main__":
    main()
