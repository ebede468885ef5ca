"""Every workflows/*.json through the real ComfyUI frontend in headless Chromium.

Each file goes through the file input (the drag-and-drop / Open path), is converted with graphToPrompt, pointed
at the tiny checkpoints (tiny sizes and steps; the core CLIP loaders swapped for the test pack's tiny-config
twins, see testing_pack), and executed on the server to a written video file. A screenshot of every loaded
workflow is kept in artifacts/<version>/workflows/.

Runs unchanged against every lane's frontend (ComfyUI 0.3.75's pinned 1.32.9, the newest 1.58.1 on 0.33.0): it uses
only what both provide (``window.app``, ``#comfy-file-input``, ``app.graphToPrompt``, ``app.api``, the public
``graph.nodes``), and the page fixture turns off the dialogs of both (setting names differ between them).
"""

import glob
import json
import os
import shutil

import pytest

import harness
from prompts import TINY

WORKFLOWS = sorted(glob.glob(os.path.join(harness.REPO_ROOT, "workflows", "*.json")))
PRE_V3 = sorted(glob.glob(os.path.join(harness.HERE, "fixtures", "pre_v3_workflows", "*.json")))


def workflow_id(path: str) -> str:
    name = os.path.basename(path)[:-5]
    return f"pre_v3-{name}" if path in PRE_V3 else name
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
TINY_SWAP = {"DualCLIPLoader": "PyramidFlowTest_TinyDualCLIPLoader",
             "TripleCLIPLoader": "PyramidFlowTest_TinyTripleCLIPLoader"}
# dialogs that could cover the canvas; unknown ids are stored and ignored, so both frontends' names are set
SETTINGS = (("Comfy.TutorialCompleted", True),
            ("Comfy.Workflow.ShowMissingModelsWarning", False),  # <= 1.32
            ("Comfy.ErrorSystem.ShowMissingModels", False),  # 1.58
            ("Comfy.Workflow.ShowMissingNodesWarning", False),
            ("Comfy.Workflow.ShowMissingMediaWarning", False))  # 1.58
NODE_COUNT = "(window.app.graph.nodes ?? window.app.graph._nodes).length"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page(server):
    harness.require(os.path.exists(CHROMIUM), f"chromium not found at {CHROMIUM} (.ci/setup_comfyui.py --browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        harness.require(False, "playwright not installed (.ci/setup_comfyui.py --browser)")
    for setting, value in SETTINGS:
        status, body = server.request("POST", f"/settings/{setting}", value)
        assert status == 200, (setting, status, body)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1680, "height": 1050})
        tab.goto(server.url, wait_until="domcontentloaded", timeout=120000)
        tab.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120000)
        yield tab
        browser.close()


def load_through_file_input(tab, path):
    with open(path, encoding="utf-8") as f:
        expected = len(json.load(f)["nodes"])
    tab.evaluate("() => window.app.graph.clear()")
    tab.set_input_files("#comfy-file-input", path)
    tab.wait_for_function(f"() => {NODE_COUNT} === {expected}", timeout=60000)
    tab.wait_for_timeout(500)


def tiny(prompt: dict) -> dict:
    """Point a real workflow's API prompt at the tiny checkpoints and CPU-sized settings (a text-to-image duration
    of 0 stays 0; each extension adds one latent frame)."""
    for node in prompt.values():
        node["class_type"] = TINY_SWAP.get(node["class_type"], node["class_type"])
        inputs = node["inputs"]
        if node["class_type"] == "PyramidFlowVideoSampler":
            keep = {"duration_seconds": 0.0} if inputs["duration_seconds"] == 0 else {}
            inputs.update({k: v for k, v in TINY.items() if k != "seed"}, **keep)
        if node["class_type"] == "PyramidFlowVideoExtend":
            inputs.update({k: v for k, v in TINY.items() if k.startswith("video_steps")}, duration_seconds=1 / 3)
        if node["class_type"] == "PyramidFlowVideoImageToVideo":
            inputs.update(width=TINY["width"], height=TINY["height"])
        if node["class_type"] in ("SaveVideo", "SaveImage"):
            inputs["filename_prefix"] = "frontend_" + inputs["filename_prefix"].split("/")[-1]
    return prompt


def expected_templates():
    return sorted(os.path.basename(path)[:-5] for path in WORKFLOWS)


def test_workflows_are_served_as_templates(server):
    """The template list (both routes; the frontends fetch /api/...) names every workflow under the pack, and
    each template file the browser would open is the workflow file itself."""
    assert WORKFLOWS
    for route in ("/workflow_templates", "/api/workflow_templates"):
        templates = server.get(route)
        assert sorted(templates.get(harness.PACK_DIR_NAME, [])) == expected_templates(), (route, templates)
    for path in WORKFLOWS:
        name = os.path.basename(path)[:-5]
        served = server.get(f"/api/workflow_templates/{harness.PACK_DIR_NAME}/{name}.json")
        with open(path, encoding="utf-8") as f:
            assert served == json.load(f), name


def test_frontend_is_the_lane_frontend_and_lists_the_templates(page):
    """The page runs the frontend package the lane installed, and its own API client sees the pack's templates
    (what Workflow -> Browse Templates shows)."""
    harness.require(bool(harness.COMFYUI_FRONTEND), "COMFYUI_FRONTEND is not set (see .ci/integration.sh)")
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == harness.COMFYUI_FRONTEND
    templates = page.evaluate("async () => await window.app.api.getWorkflowTemplates()")
    assert sorted(templates.get(harness.PACK_DIR_NAME, [])) == expected_templates(), templates


@pytest.mark.parametrize("path", WORKFLOWS + PRE_V3, ids=[workflow_id(p) for p in WORKFLOWS + PRE_V3])
def test_workflow_loads_converts_and_runs(page, server, base_dir, path):
    """Every shipped workflow, and every workflow saved before the nodes moved to V3, loads through the file input,
    converts, and runs to its video (or image) on the server."""
    name = workflow_id(path)
    load_through_file_input(page, path)
    shots = os.path.join(harness.ARTIFACTS, "workflows")
    os.makedirs(shots, exist_ok=True)
    page.evaluate("() => { const c = window.app.canvas; c.ds.scale = 0.6; c.ds.offset = [110, 260]; "
                  "c.setDirty(true, true); }")
    page.wait_for_timeout(300)
    page.screenshot(path=os.path.join(shots, name + ".png"))

    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    with open(path, encoding="utf-8") as f:
        ui = json.load(f)
    sampler_ui = next((n for n in ui["nodes"] if n["type"] == "PyramidFlowVideoSampler"), None)
    if sampler_ui is not None:
        sampler = prompt[str(sampler_ui["id"])]["inputs"]
        widgets = sampler_ui["widgets_values"]
        assert (sampler["width"], sampler["height"], sampler["duration_seconds"], sampler["seed"]) == \
            (widgets[0], widgets[1], widgets[2], widgets[11]), "widget order of the workflow differs from the schema"
        assert sampler.get("noise", "default") == "default" and sampler.get("history_window", 0) in (0, 16)
    assert "Note" not in {node["class_type"] for node in prompt.values()}

    entry = server.run(tiny(prompt))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    outputs = [p for p in harness.output_files(entry, base_dir) if p.endswith((".mp4", ".png"))]
    assert outputs and os.path.getsize(outputs[0]) > 0, entry["outputs"]
