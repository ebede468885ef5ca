"""Pyramid Flow video generation for ComfyUI (V3 nodes: ``comfy_entrypoint``).

ComfyUI imports this file as the pack's package; ``pyramid_flow/`` (the model code, no ComfyUI imports) and
``nodes/`` (the ComfyUI face) are its subpackages. Importing does no network access and installs nothing.
"""

try:
    import comfy.model_management  # noqa: F401  (always importable when ComfyUI loads the pack)
except ImportError:  # imported outside ComfyUI (e.g. pytest collecting the repository as a package): no nodes
    __all__ = []
else:
    from .nodes.extension import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
