"""Every workflows/*.json through the real ComfyUI frontend in headless Chromium.

Each file goes through the file input (the drag-and-drop / Open path), is converted with graphToPrompt, pointed
at the tiny checkpoints (tiny sizes and steps; the core CLIP loaders swapped for the test pack's tiny-config
twins, see testing_pack), and executed on the server to a written video file. A screenshot of every loaded
workflow is kept in artifacts/workflows/.
"""

import glob
import json
import os
import shutil

import pytest

import harness
from prompts import TINY

WORKFLOWS = sorted(glob.glob(os.path.join(harness.REPO_ROOT, "workflows", "*.json")))
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
TINY_SWAP = {"DualCLIPLoader": "PyramidFlowTest_TinyDualCLIPLoader",
             "TripleCLIPLoader": "PyramidFlowTest_TinyTripleCLIPLoader"}
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page(server):
    harness.require(os.path.exists(CHROMIUM), f"chromium not found at {CHROMIUM} (.ci/setup_comfyui.py --browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        harness.require(False, "playwright not installed (.ci/setup_comfyui.py --browser)")
    for setting, value in (("Comfy.TutorialCompleted", True), ("Comfy.Workflow.ShowMissingModelsWarning", False),
                           ("Comfy.Workflow.ShowMissingNodesWarning", False)):
        server.request("POST", f"/settings/{setting}", value)
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
    tab.wait_for_function(f"() => window.app.graph._nodes.length === {expected}", timeout=60000)
    tab.wait_for_timeout(500)


def tiny(prompt: dict) -> dict:
    """Point a real workflow's API prompt at the tiny checkpoints and CPU-sized settings."""
    for node in prompt.values():
        node["class_type"] = TINY_SWAP.get(node["class_type"], node["class_type"])
        inputs = node["inputs"]
        if node["class_type"] == "PyramidFlowVideoSampler":
            inputs.update({k: v for k, v in TINY.items() if k != "seed"})
        if node["class_type"] == "PyramidFlowVideoImageToVideo":
            inputs.update(width=TINY["width"], height=TINY["height"])
        if node["class_type"] == "SaveVideo":
            inputs["filename_prefix"] = "video/frontend_" + inputs["filename_prefix"].split("/")[-1]
    return prompt


def test_workflows_are_served_as_templates(server):
    templates = server.get("/workflow_templates")
    names = {name for items in templates.values() for name in items}
    for path in WORKFLOWS:
        assert os.path.basename(path)[:-5] in names, templates


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p)[:-5] for p in WORKFLOWS])
def test_workflow_loads_converts_and_runs(page, server, base_dir, path):
    name = os.path.basename(path)[:-5]
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
    sampler_ui = next(n for n in ui["nodes"] if n["type"] == "PyramidFlowVideoSampler")
    sampler = prompt[str(sampler_ui["id"])]["inputs"]
    widgets = sampler_ui["widgets_values"]
    assert (sampler["width"], sampler["height"], sampler["duration_seconds"], sampler["seed"]) == \
        (widgets[0], widgets[1], widgets[2], widgets[11]), "widget order of the workflow differs from INPUT_TYPES"
    assert "Note" not in {node["class_type"] for node in prompt.values()}

    entry = server.run(tiny(prompt))
    assert entry["status"]["status_str"] == "success", harness.error_message(entry)
    videos = [p for p in harness.output_files(entry, base_dir) if p.endswith(".mp4")]
    assert videos and os.path.getsize(videos[0]) > 0, entry["outputs"]
