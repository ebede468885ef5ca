"""ComfyUI nodes of the pack (V3 schema), one module per role:

- ``loaders``: the DiT, the VAE and the official text encoders;
- ``conditioning``: text encode, prompt schedule, image-to-video;
- ``sampling``: the sampler and video extension;
- ``latent``: VAE decode and encode.

``extension`` registers them (``comfy_entrypoint``); ``types`` holds the socket types and LATENT keys, ``base`` the
node base class, ``models`` the model files and ModelPatchers, ``common`` the helpers that need no ComfyUI (the
fast test lane imports it without one). Only this package imports ``comfy``.
"""
