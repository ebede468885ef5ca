"""Where a loader puts its model: ComfyUI's main device by default, or any device of the machine (the text
encoders on a second GPU, the DiT on the first, ...), and the second device of the Multi-GPU node."""

from typing import List, Optional, Tuple

import torch

from comfy_api.v0_0_2 import io

DEFAULT_DEVICE = "default"
DEVICE_TOOLTIP = ("default: ComfyUI's choice for this model. Or a device of this machine (cuda:1, ...): the model "
                  "then loads, offloads and runs there through ComfyUI's model management, and tensors move to the "
                  "next node's device by themselves.")


def machine_devices() -> List[str]:
    """The devices of this machine, accelerators first, cpu last."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += [f"xpu:{i}" for i in range(xpu.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names + ["cpu"]


def device_input() -> io.Combo.Input:
    """The optional ``device`` input of every loader (last, so workflows saved without it still load)."""
    return io.Combo.Input("device", options=[DEFAULT_DEVICE, *machine_devices()], default=DEFAULT_DEVICE,
                          optional=True, tooltip=DEVICE_TOOLTIP)


def unknown_device_message(name: str) -> str:
    return (f"Device '{name}' does not exist on this machine, which has: {', '.join(machine_devices())}. Pick one of "
            f"them, or '{DEFAULT_DEVICE}' for ComfyUI's choice.")


def placed_on(name: Optional[str], load_device: torch.device, offload_device: torch.device
              ) -> Tuple[torch.device, torch.device]:
    """(load device, offload device) of a loader's model for its ``device`` input (None or default: ComfyUI's)."""
    if name in (None, DEFAULT_DEVICE):
        return load_device, offload_device
    if name not in machine_devices():
        raise ValueError(unknown_device_message(name))
    device = torch.device(name)
    return device, device if device.type == "cpu" else offload_device
