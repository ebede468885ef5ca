"""torch.compile of the DiT blocks: the same velocities as eager within a few ulps, the model unchanged after."""

import pytest
import torch

from pyramid_flow.dit.compile import block_lists, compiled_blocks

from dit_inputs import dit_inputs, tiny_dit
from tolerance import assert_within_ulps


@pytest.mark.compile
@pytest.mark.parametrize("variant", ["miniflux", "sd3"])
def test_compiled_blocks_match_eager_and_restore_the_model(variant):
    model = tiny_dit(variant)
    keys = list(model.state_dict())
    blocks = [block for blocks in block_lists(model) for block in blocks]
    generator = torch.Generator().manual_seed(1)
    calls = [dit_inputs(model, generator, frames) for frames in (2, 3)]  # two sequence lengths, as in a run
    with torch.no_grad():
        eager = [model(*call) for call in calls]
        with compiled_blocks(model, {"backend": "inductor"}):
            assert all(isinstance(block, torch._dynamo.eval_frame.OptimizedModule)
                       for blocks in block_lists(model) for block in blocks)
            compiled = [model(*call) for call in calls]
    for got, expected in zip(compiled, eager):
        assert_within_ulps(got, expected, ulps=64)
    assert [block for blocks in block_lists(model) for block in blocks] == blocks
    assert list(model.state_dict()) == keys


def test_no_options_leaves_the_model_eager():
    model = tiny_dit("sd3")
    blocks = list(model.transformer_blocks)
    with compiled_blocks(model, None):
        assert list(model.transformer_blocks) == blocks


@pytest.mark.parametrize("options, word", [({"backend": "tensorrt"}, "backend"), ({"mode": "fastest"}, "mode")])
def test_unknown_options_are_named(options, word):
    with pytest.raises(ValueError, match=word):
        with compiled_blocks(tiny_dit("sd3"), options):
            pass


@pytest.mark.compile
def test_the_pipeline_compiles_the_dit_only_while_it_samples(tmp_path):
    from pyramid_flow.pipeline import PyramidFlowPipeline
    from pyramid_flow.testing.tiny import build_tiny_checkpoint

    root = build_tiny_checkpoint(str(tmp_path / "tiny"))
    kwargs = dict(height=128, width=128, temp=2, num_inference_steps=[1, 1, 1], video_num_inference_steps=[1, 1, 1],
                  seed=3, output_type="latent")
    eager = PyramidFlowPipeline.from_pretrained(root).generate("a cat", **kwargs)
    pipe = PyramidFlowPipeline.from_pretrained(root, compile_options={"backend": "aot_eager"})
    blocks = [block for blocks in block_lists(pipe.dit) for block in blocks]
    compiled = pipe.generate("a cat", **kwargs)
    assert_within_ulps(compiled, eager, ulps=64)
    assert [block for blocks in block_lists(pipe.dit) for block in blocks] == blocks
