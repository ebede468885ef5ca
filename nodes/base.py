"""The base of every node of the pack: V3 ``io.ComfyNode`` plus the checks every node's inputs get first."""

from typing import Sequence, Union

from comfy_api.v0_0_2 import io

from .common import check_finite
from .devices import unknown_device_message


class PyramidFlowNode(io.ComfyNode):
    """``execute`` refuses non-finite float inputs (naming the input) before any work, then calls ``process``."""

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        check_finite(inputs)
        return cls.process(**inputs)

    @classmethod
    def process(cls, **inputs) -> io.NodeOutput:
        raise NotImplementedError

    @classmethod
    def check_combos(cls, **values) -> Union[bool, str]:
        """True, or why a combo value is not one of the node's options: what a node's ``validate_inputs`` returns,
        so the queue refuses it before anything runs (ComfyUI 0.3.75 does not check a V3 combo's value itself).
        ``validate_inputs`` must name only combo inputs: ComfyUI skips its own checks of the inputs it names."""
        options = {item.id: list(item.options) for item in cls.define_schema().inputs if isinstance(item, io.Combo.Input)}
        for name, value in values.items():
            if value is not None and name in options and value not in options[name]:
                return unknown_device_message(value) if name == "device" else cls.combo_error(name, value, options[name])
        return True

    @classmethod
    def combo_error(cls, name: str, value, options: Sequence[str]) -> str:
        shown = ", ".join(map(str, options[:12])) + (f", ... ({len(options)} in all)" if len(options) > 12 else "")
        return f"'{value}' is not an option of '{name}' ({shown})."

    @classmethod
    def node_id(cls):
        """The running node's id in the graph (for status text); None when called outside a prompt."""
        return getattr(cls.hidden, "unique_id", None)
