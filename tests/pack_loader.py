"""Import pieces of the node pack the way ComfyUI sees it: the repository root as one package.

``load_pack_module("nodes.common")`` works without ComfyUI (the root ``__init__.py``, which imports ``comfy``,
is not executed). ``load_pack()`` runs the root ``__init__.py`` exactly like ComfyUI's loader and needs ComfyUI's
root on ``sys.path`` first.
"""

import importlib
import importlib.util
import os
import sys
import types

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "pyramid_flow_pack"


def load_pack_module(name: str):
    if PACK_NAME not in sys.modules:
        package = types.ModuleType(PACK_NAME)
        package.__path__ = [REPO_ROOT]
        sys.modules[PACK_NAME] = package
    return importlib.import_module(f"{PACK_NAME}.{name}")


def load_pack():
    """Execute the root __init__.py as ComfyUI's load_custom_node does (spec_from_file_location)."""
    existing = sys.modules.get(PACK_NAME)
    if existing is not None and hasattr(existing, "NODE_CLASS_MAPPINGS"):
        return existing
    for key in [k for k in sys.modules if k == PACK_NAME or k.startswith(PACK_NAME + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(REPO_ROOT, "__init__.py"),
                                                  submodule_search_locations=[REPO_ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
