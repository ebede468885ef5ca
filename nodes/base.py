"""The base of every node of the pack: V3 ``io.ComfyNode`` plus the checks every node's inputs get first."""

from comfy_api.v0_0_2 import io

from .common import check_finite


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
    def node_id(cls):
        """The running node's id in the graph (for status text); None when called outside a prompt."""
        return getattr(cls.hidden, "unique_id", None)
