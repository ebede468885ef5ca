"""ComfyUI nodes of the Pyramid Flow pack. Only this package imports ``comfy``; ``common`` needs no ComfyUI.

The node mappings are merged in the pack's root ``__init__.py``.
"""
