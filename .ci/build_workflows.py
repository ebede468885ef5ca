"""Write the example workflows (UI format 0.4) into workflows/ from the compact definitions below.

The JSON files in workflows/ are what users load and what ComfyUI serves as templates; this script is how they
are (re)generated when a node's inputs change, so widget order always follows the nodes' schemas. The integration
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
from pyramid_flow.text import DEFAULT_NEGATIVE_PROMPT as DEFAULT_NEGATIVE  # noqa: E402

OUT = os.path.join(REPO_ROOT, "workflows")
PACK_ID, PACK_VER = "pyramid-flow-video", "0.2.0"
CORE_VER = "0.3.75"
FRONTEND = "1.32.9"
HF = "https://huggingface.co"
EXAMPLE_IMAGE, EXAMPLE_VIDEO = "pyramid_flow_example.png", "pyramid_flow_example.mp4"

TEXT_ENCODER_FILES = {
    "clip_l.safetensors": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    "t5xxl_fp16.safetensors": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
    "clip_g.safetensors": f"{HF}/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/text_encoders/clip_g.safetensors",
}
MODEL, VAE, TEXT = "PYRAMID_FLOW_VIDEO_MODEL", "PYRAMID_FLOW_VIDEO_VAE", "PYRAMID_FLOW_VIDEO_TEXT_ENCODER"
TEXT_SOCKETS = ([("clip", "CLIP", True), ("text_encoder", TEXT, True)],
                [("positive", "CONDITIONING"), ("negative", "CONDITIONING")])
# socket inputs (name, type, optional) and outputs (name, type) of every node type used
SOCKETS = {
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "TripleCLIPLoader": ([], [("CLIP", "CLIP")]),
    "PyramidFlowVideoTextEncode": TEXT_SOCKETS,
    "PyramidFlowVideoPromptSchedule": TEXT_SOCKETS,
    "PyramidFlowVideoModelLoader": ([], [("model", MODEL)]),
    "PyramidFlowVideoVAELoader": ([], [("vae", VAE)]),
    "PyramidFlowVideoSampler": ([("model", MODEL, False), ("positive", "CONDITIONING", False),
                                 ("negative", "CONDITIONING", False), ("image_latent", "LATENT", True)],
                                [("latent", "LATENT"), ("frames", "INT")]),
    "PyramidFlowVideoExtend": ([("model", MODEL, False), ("positive", "CONDITIONING", False),
                                ("negative", "CONDITIONING", False), ("video", "LATENT", True), ("images", "IMAGE", True),
                                ("vae", VAE, True)],
                               [("latent", "LATENT"), ("new_latent", "LATENT"), ("frames", "INT")]),
    "PyramidFlowVideoVAEDecode": ([("vae", VAE, False), ("samples", "LATENT", False)], [("images", "IMAGE")]),
    "PyramidFlowVideoImageToVideo": ([("vae", VAE, False), ("image", "IMAGE", False)], [("image_latent", "LATENT")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "LoadVideo": ([], [("VIDEO", "VIDEO")]),
    "GetVideoComponents": ([("video", "VIDEO", False)], [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    "CreateVideo": ([("images", "IMAGE", False), ("audio", "AUDIO", True)], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO", False)], []),
    "SaveImage": ([("images", "IMAGE", False)], []),
    "Note": ([], []),
}
RUN_OPTIONS = ["default", 0]  # the sampler's and Extend's optional widgets: noise, history_window (0 = all frames)


def hf_file(repo: str, path: str) -> str:
    return f"{HF}/{repo}/resolve/main/{path}"


# Folders the repositories ship as a pickled .bin rather than safetensors (the loaders read both).
BIN_FOLDERS = {("pyramid-flow-miniflux", "causal_video_vae")}


def folder_models(repo_folder: str, component: str):
    """properties.models for a component folder of rain1011/<repo> (config + weights)."""
    directory = f"pyramidflow/{repo_folder}/{component}"
    weights = "diffusion_pytorch_model." + ("bin" if (repo_folder, component) in BIN_FOLDERS else "safetensors")
    return [{"name": name, "url": hf_file(f"rain1011/{repo_folder}", f"{component}/{name}"), "directory": directory}
            for name in ("config.json", weights)]


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
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/workflows/{name}")), "revision": 0,
            "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}, "frontendVersion": FRONTEND}, "version": 0.4,
        }


def note(g: Graph, pos, title, lines):
    g.add("Note", pos, ["\n".join(lines)], size=(420, 420), title=title)


def files_note(variant: str, resolution: str) -> list:
    repo = f"pyramid-flow-{variant}"
    te = ("clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors (the SD3 text encoders; TripleCLIPLoader)"
          if variant == "sd3" else
          "clip_l.safetensors, t5xxl_fp16.safetensors (the Flux text encoders; DualCLIPLoader type flux)")
    return [
        "Files (or switch on download_if_missing in the loaders to fetch the rain1011 folders):",
        f"- ComfyUI/models/pyramidflow/{repo}/diffusion_transformer_{resolution}/ (config.json + "
        f"diffusion_pytorch_model.safetensors from https://huggingface.co/rain1011/{repo})",
        f"- ComfyUI/models/pyramidflow/{repo}/causal_video_vae/ (same repository)",
        f"- ComfyUI/models/text_encoders/: {te}. Already have them for Flux/SD3? They are reused as is.",
    ]


VRAM = {"384p": "about 8 GB for 5 s at 640x384", "768p": "about 12-16 GB for 10 s at 1280x768",
        "image": "about 10 GB at 1024x1024"}
VRAM_NOTE = ("VRAM (estimate, bf16 weights, ComfyUI offloads what does not fit): {}. Less works, slower, through "
             "ComfyUI's partial loading; fp8_e4m3fn weights halve the DiT. If decoding runs out of memory, lower "
             "tile_size in the VAE Decode node (it also retries smaller tiles by itself).")


def text_encoders(g: Graph, variant: str):
    if variant == "sd3":
        files = ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"]
        widgets = files
        loader = "TripleCLIPLoader"
    else:
        files = ["clip_l.safetensors", "t5xxl_fp16.safetensors"]
        widgets, loader = files + ["flux", "default"], "DualCLIPLoader"
    return g.add(loader, (0, 0), widgets, size=(400, 130),
                 models=[{"name": f, "url": TEXT_ENCODER_FILES[f], "directory": "text_encoders"} for f in files])


def models(g: Graph, variant: str, dit_folder: str):
    repo = f"pyramid-flow-{variant}"
    model = g.add("PyramidFlowVideoModelLoader", (0, 180), [f"{repo}/{dit_folder}", "bf16", False], size=(400, 110),
                  models=folder_models(repo, dit_folder))
    vae = g.add("PyramidFlowVideoVAELoader", (0, 330), [f"{repo}/causal_video_vae", "auto", False], size=(400, 110),
                models=folder_models(repo, "causal_video_vae"))
    return model, vae


def prompt_node(g: Graph, clip: int, prompt: str, schedule: bool = False) -> int:
    node_type = "PyramidFlowVideoPromptSchedule" if schedule else "PyramidFlowVideoTextEncode"
    text = g.add(node_type, (440, 0), [prompt, DEFAULT_NEGATIVE, True], size=(420, 330))
    g.link(clip, 0, text, "clip")
    return text


def sampler(g: Graph, model, text, size, seconds, guidance, video_guidance, seed, pos=(900, 0), window=0) -> int:
    node = g.add("PyramidFlowVideoSampler", pos, [*size, seconds, 20, 20, 20, 10, 10, 10, guidance, video_guidance,
                                                  seed, "fixed", "default", window], size=(340, 520))
    g.link(model, 0, node, "model")
    g.link(text, 0, node, "positive")
    g.link(text, 1, node, "negative")
    return node


def extend(g: Graph, model, text, seconds, video_guidance, seed, pos, window) -> int:
    node = g.add("PyramidFlowVideoExtend", pos, [seconds, 10, 10, 10, 7.0, video_guidance, seed, "fixed", "default",
                                                 window], size=(340, 420))
    g.link(model, 0, node, "model")
    g.link(text, 0, node, "positive")
    g.link(text, 1, node, "negative")
    return node


def decode_to_video(g: Graph, vae, latent, prefix, pos=(1280, 0)) -> None:
    x, y = pos
    decode = g.add("PyramidFlowVideoVAEDecode", (x, y), [256, 0.25, 1], size=(320, 130))
    create = g.add("CreateVideo", (x, y + 180), [24], size=(270, 80))
    save = g.add("SaveVideo", (x, y + 300), [prefix, "auto", "auto"], size=(420, 480))
    g.link(vae, 0, decode, "vae")
    g.link(latent, 0, decode, "samples")
    g.link(decode, 0, create, "images")
    g.link(create, 0, save, "video")


def video_workflow(name, variant, resolution, seconds, i2v, prompt, seed):
    size = (640, 384) if resolution == "384p" else (1280, 768)
    g = Graph()
    clip = text_encoders(g, variant)
    text = prompt_node(g, clip, prompt)
    model, vae = models(g, variant, f"diffusion_transformer_{resolution}")
    node = sampler(g, model, text, size, seconds, 7.0 if resolution == "384p" else 9.0, 4.0 if i2v else 5.0, seed)
    decode_to_video(g, vae, node, f"video/pyramid_flow_{variant}_{resolution}")
    lines = [f"Pyramid Flow {variant} {resolution} {'image' if i2v else 'text'}-to-video", "",
             *files_note(variant, resolution), "", VRAM_NOTE.format(VRAM[resolution]), "",
             "Output: 24 fps; frames = 8 * latent frames - 7 (5 s = 121 frames, 10 s = 241)."]
    if i2v:
        image = g.add("LoadImage", (0, 480), [EXAMPLE_IMAGE, "image"], size=(400, 330))
        cond = g.add("PyramidFlowVideoImageToVideo", (0, 850), [*size, "crop"], size=(400, 150))
        g.link(vae, 0, cond, "vae")
        g.link(image, 0, cond, "image")
        g.link(cond, 0, node, "image_latent")
        lines += ["", "Load your first frame in Load Image. It is resized to the video size keeping its aspect ratio "
                      "(crop or pad), never squashed."]
    note(g, (440, 380), "Pyramid Flow: files and VRAM", lines)
    return g.to_json(name)


def extend_twice_workflow(name):
    """384p: 5 s from the prompt, then two extensions of 5 s each (15 s), with a bounded history."""
    g = Graph()
    clip = text_encoders(g, "miniflux")
    text = prompt_node(g, clip, "A red panda walking across a snowy log, golden hour, cinematic")
    model, vae = models(g, "miniflux", "diffusion_transformer_384p")
    first = sampler(g, model, text, (640, 384), 5.0, 7.0, 5.0, 42)
    second = extend(g, model, text, 5.0, 5.0, 42, (1280, 0), 16)
    third = extend(g, model, text, 5.0, 5.0, 42, (1660, 0), 16)
    g.link(first, 0, second, "video")
    g.link(second, 0, third, "video")
    decode_to_video(g, vae, third, "video/pyramid_flow_miniflux_384p_15s", pos=(2040, 0))
    note(g, (440, 380), "Pyramid Flow: generate 5 s, then extend twice", [
        "A 15 s video in three pieces: the sampler makes 5 s, each Extend adds 5 s against the frames before it.",
        "With the default noise and the same seed on all three nodes, this equals one 15 s run.",
        "history_window 16 keeps the first frame and the 15 newest in every step: memory stays flat and the frame "
        "positions stay in the trained range (31 latent frames); 0 would condition on the whole video.",
        "Chain more Extend nodes for longer videos; change the prompt on one to move the story on.", "",
        *files_note("miniflux", "384p"), "", VRAM_NOTE.format(VRAM["384p"])])
    return g.to_json(name)


def extend_video_workflow(name):
    """768p: continue a video loaded from a file."""
    g = Graph()
    clip = text_encoders(g, "miniflux")
    text = prompt_node(g, clip, "The camera keeps flying forward over the landscape, smooth motion, cinematic")
    model, vae = models(g, "miniflux", "diffusion_transformer_768p")
    video = g.add("LoadVideo", (0, 480), [EXAMPLE_VIDEO, "image"], size=(400, 330))
    parts = g.add("GetVideoComponents", (0, 850), [], size=(300, 100))
    node = extend(g, model, text, 5.0, 5.0, 42, (900, 0), 16)
    g.link(video, 0, parts, "video")
    g.link(parts, 0, node, "images")
    g.link(vae, 0, node, "vae")
    decode_to_video(g, vae, node, "video/pyramid_flow_miniflux_768p_extended")
    note(g, (440, 380), "Pyramid Flow: extend an input video", [
        "Continues the video in Load Video by 5 s. Its frames are encoded with the causal VAE (1 + 8k frames are "
        "used; the size is centre-cropped to multiples of 64, e.g. 1280x768 for the 768p model).",
        "The output is the whole video: the given part (re-decoded) and the new frames, at 24 fps.", "",
        *files_note("miniflux", "768p"), "", VRAM_NOTE.format(VRAM["768p"])])
    return g.to_json(name)


def prompt_travel_workflow(name):
    g = Graph()
    clip = text_encoders(g, "miniflux")
    text = prompt_node(g, clip, "0: a red panda sitting on a snowy log, golden hour\n"
                                "2.5: the red panda jumps down into the deep snow\n"
                                "4: the red panda runs away through the snow", schedule=True)
    model, vae = models(g, "miniflux", "diffusion_transformer_384p")
    node = sampler(g, model, text, (640, 384), 5.0, 7.0, 5.0, 42)
    decode_to_video(g, vae, node, "video/pyramid_flow_miniflux_prompt_travel")
    note(g, (440, 380), "Pyramid Flow: prompt travel", [
        "Pyramid Flow Prompt Schedule gives each stretch of the video its own prompt: '<seconds>: <prompt>', one per "
        "line. The prompt switches at the latent frame (1/3 s) holding each time; the earlier frames carry the "
        "motion across. Each distinct prompt is encoded once; the negative prompt stays one.", "",
        *files_note("miniflux", "384p"), "", VRAM_NOTE.format(VRAM["384p"])])
    return g.to_json(name)


def text_to_image_workflow(name):
    g = Graph()
    clip = text_encoders(g, "miniflux")
    text = prompt_node(g, clip, "A cozy wooden cabin in a snowy forest at dusk, warm light in the windows")
    model, vae = models(g, "miniflux", "diffusion_transformer_image")
    node = sampler(g, model, text, (1024, 1024), 0.0, 9.0, 5.0, 42)
    decode = g.add("PyramidFlowVideoVAEDecode", (1280, 0), [256, 0.25, 1], size=(320, 130))
    save = g.add("SaveImage", (1280, 180), ["pyramid_flow_image"], size=(420, 480))
    g.link(vae, 0, decode, "vae")
    g.link(node, 0, decode, "samples")
    g.link(decode, 0, save, "images")
    note(g, (440, 380), "Pyramid Flow: text-to-image", [
        "The miniFLUX image DiT (diffusion_transformer_image) makes one image: duration 0. Trained sizes: 1024x1024, "
        "1280x768, 768x1280; guidance 9. Asked for a video it refuses with a clear message.", "",
        *files_note("miniflux", "image"), "", VRAM_NOTE.format(VRAM["image"])])
    return g.to_json(name)


WORKFLOWS = {
    "pyramid_flow_miniflux_t2v_384p_5s": lambda n: video_workflow(
        n, "miniflux", "384p", 5.0, False, "A movie trailer featuring the adventures of the 30 year old space man "
        "wearing a red wool knitted motorcycle helmet, blue sky, salt desert, cinematic style, shot on 35mm film, "
        "vivid colors", 42),
    "pyramid_flow_miniflux_t2v_768p_10s": lambda n: video_workflow(
        n, "miniflux", "768p", 10.0, False, "Beautiful, snowy Tokyo city is bustling. The camera moves through the "
        "bustling city street, following several people enjoying the beautiful snowy weather and shopping at nearby "
        "stalls", 42),
    "pyramid_flow_miniflux_i2v_384p": lambda n: video_workflow(n, "miniflux", "384p", 5.0, True,
                                                               "FPV flying over the Great Wall", 42),
    "pyramid_flow_miniflux_i2v_768p": lambda n: video_workflow(n, "miniflux", "768p", 5.0, True,
                                                               "FPV flying over the Great Wall", 42),
    "pyramid_flow_sd3_t2v_384p_5s": lambda n: video_workflow(
        n, "sd3", "384p", 5.0, False, "A side profile shot of a woman with fireworks exploding in the distance "
        "beyond her", 42),
    "pyramid_flow_miniflux_384p_extend_twice": extend_twice_workflow,
    "pyramid_flow_miniflux_768p_extend_video": extend_video_workflow,
    "pyramid_flow_miniflux_384p_prompt_travel": prompt_travel_workflow,
    "pyramid_flow_miniflux_t2i_1024": text_to_image_workflow,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if workflows/ differs from the definitions")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    stale = []
    for name, build in WORKFLOWS.items():
        text = json.dumps(build(name), indent=2) + "\n"
        path = os.path.join(OUT, name + ".json")
        current = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if current != text:
            stale.append(path)
            if not args.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    extra = sorted(set(os.listdir(OUT)) - {name + ".json" for name in WORKFLOWS})
    if args.check and (stale or extra):
        sys.exit(f"stale workflows (run .ci/build_workflows.py): {stale}; not generated here: {extra}")
    print(("checked " if args.check else "wrote ") + ", ".join(sorted(WORKFLOWS)))


if __name__ == "__main__":
    main()
