"""Fast lane: the example workflows' structure (the integration lane runs them in the real frontend)."""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "workflows", "*.json")))
EXPECTED = {
    "pyramid_flow_miniflux_t2v_384p_5s", "pyramid_flow_miniflux_t2v_768p_10s", "pyramid_flow_miniflux_i2v_384p",
    "pyramid_flow_miniflux_i2v_768p", "pyramid_flow_sd3_t2v_384p_5s", "pyramid_flow_miniflux_384p_extend_twice",
    "pyramid_flow_miniflux_768p_extend_video", "pyramid_flow_miniflux_384p_prompt_travel",
    "pyramid_flow_miniflux_t2i_1024",
}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_the_workflows_exist():
    assert {os.path.basename(p)[:-5] for p in FILES} == EXPECTED


def test_workflows_match_their_generator():
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, ".ci", "build_workflows.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _by_type(wf):
    by_type = {}
    for node in wf["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    return by_type


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p)[:-5] for p in FILES])
def test_workflow_structure(path):
    wf = load(path)
    name = os.path.basename(path)
    assert wf["version"] == 0.4 and isinstance(wf["id"], str)  # the frontend silently drops files with id null
    nodes = {n["id"]: n for n in wf["nodes"]}
    by_type = _by_type(wf)
    links = {link[0]: link for link in wf["links"]}
    if "t2i" in name:  # one image: decode -> SaveImage
        save = by_type["SaveImage"][0]
        assert nodes[links[save["inputs"][0]["link"]][1]]["type"] == "PyramidFlowVideoVAEDecode"
        assert by_type["PyramidFlowVideoSampler"][0]["widgets_values"][2] == 0.0
        assert by_type["PyramidFlowVideoModelLoader"][0]["widgets_values"][0].endswith("diffusion_transformer_image")
    else:  # ends in CreateVideo (24 fps) -> SaveVideo
        create, save = by_type["CreateVideo"][0], by_type["SaveVideo"][0]
        assert create["widgets_values"][0] == 24
        assert nodes[links[save["inputs"][0]["link"]][1]]["type"] == "CreateVideo"
    # a Note saying where the files go and the VRAM
    note = by_type["Note"][0]["widgets_values"][0]
    assert "models/pyramidflow/" in note and "models/text_encoders/" in note and "VRAM" in note
    # download hints: URLs and target folders on every loader
    for kind in ("PyramidFlowVideoModelLoader", "PyramidFlowVideoVAELoader"):
        models = by_type[kind][0]["properties"]["models"]
        assert models and all(m["url"].startswith("https://huggingface.co/rain1011/") and m["directory"] for m in models)
    clip_loader = (by_type.get("DualCLIPLoader") or by_type["TripleCLIPLoader"])[0]
    assert {m["directory"] for m in clip_loader["properties"]["models"]} == {"text_encoders"}
    # registry ids, fixed seeds, the variant's text encoders
    for node in nodes.values():
        if node["type"] != "Note":
            assert node["properties"]["cnr_id"] in ("pyramid-flow-video", "comfy-core")
    for sampler in by_type.get("PyramidFlowVideoSampler", []):
        assert sampler["widgets_values"][12] == "fixed" and sampler["widgets_values"][13:] in (["default", 0],)
    for extend in by_type.get("PyramidFlowVideoExtend", []):
        assert extend["widgets_values"][7] == "fixed" and extend["widgets_values"][9] == 16  # a bounded history
    if "sd3" in name:
        assert "TripleCLIPLoader" in by_type
    else:
        assert by_type["DualCLIPLoader"][0]["widgets_values"][2] == "flux"
    if "768p" in name and "PyramidFlowVideoSampler" in by_type:
        assert by_type["PyramidFlowVideoSampler"][0]["widgets_values"][:2] == [1280, 768]
    elif "384p" in name:
        assert by_type["PyramidFlowVideoSampler"][0]["widgets_values"][:2] == [640, 384]
    assert ("PyramidFlowVideoImageToVideo" in by_type) == ("i2v" in name)
    assert ("PyramidFlowVideoPromptSchedule" in by_type) == ("prompt_travel" in name)
    assert len(by_type.get("PyramidFlowVideoExtend", [])) == {"extend_twice": 2, "extend_video": 1}.get(
        next((k for k in ("extend_twice", "extend_video") if k in name), ""), 0)
    # every link's endpoints agree with the node sockets
    for link_id, src, src_slot, dst, dst_slot, link_type in wf["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[dst]["inputs"][dst_slot]["type"] == link_type
