"""Integration lane: a real ComfyUI server (CPU; the version .ci/integration.sh set up) with the pack and tiny
checkpoints.

Every test here is marked ``integration``; the fast lane deselects them with ``-m "not integration"``.
"""

import os

import pytest

import harness


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs a real ComfyUI (.ci/setup_comfyui.py); slow")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return harness.build_base_dir(str(tmp_path_factory.mktemp("comfy_base")))


@pytest.fixture(scope="session")
def server(base_dir):
    srv = harness.ComfyServer(base_dir)
    yield srv
    srv.stop()
    os.makedirs(harness.ARTIFACTS, exist_ok=True)
    with open(os.path.join(harness.ARTIFACTS, "comfyui_server.log"), "w", encoding="utf-8") as f:
        f.write(srv.read_log())
