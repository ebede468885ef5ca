"""DiT loading: variant detection, single files (bf16 / fp8, prefixed), wrong or broken files, dtypes."""

import json
import os
import shutil
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from golden import cases, checkpoint_root, manifest, tensors, variant_info
from tolerance import assert_within_ulps
from pyramid_flow.dit import PyramidFluxDiT, PyramidMMDiT, load_dit
from pyramid_flow.dit.loading import infer_config, target_dtype
from pyramid_flow.loading.detect import identify_checkpoint
from pyramid_flow.loading.state_dict import CheckpointError, find_weight_file, load_state_dict

VARIANTS = ["sd3", "miniflux"]
CLASSES = {"sd3": PyramidMMDiT, "miniflux": PyramidFluxDiT}
FP8 = torch.float8_e4m3fn
# max |diff| / max |reference| against the float32 model (weights rounded to bf16 / fp8 e4m3fn)
REL_TOL = {torch.bfloat16: 0.02, FP8: 0.15}


class CastLinear(torch.nn.Linear):
    """A manual-cast Linear (like comfy.ops.manual_cast): weights stored in any dtype, cast at use."""

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


CAST_OPS = types.SimpleNamespace(Linear=CastLinear, Conv2d=torch.nn.Conv2d)


def dit_folder(variant: str) -> str:
    return os.path.join(checkpoint_root(variant), variant_info(variant)["dit_folder"])


def golden_inputs(variant: str):
    """The recorded ``gen`` call of the variant's dit_forward case: (clips, context, mask, pooled, timestep)."""
    case = next(c for c in cases("dit_forward") if c["variant"] == variant)
    recorded = tensors(case["file"])
    clip_keys = sorted((k for k in recorded if k.startswith("gen/sample/0/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    names = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "timestep_ratio")
    return ([recorded[k] for k in clip_keys], *(recorded[f"gen/{n}"] for n in names))


def run(model, inputs, dtype=torch.float32):
    clips, context, mask, pooled, timestep = inputs
    with torch.no_grad():
        return model([c.to(dtype) for c in clips], context.to(dtype), mask, pooled.to(dtype), timestep).float()


def relative_error(out, ref) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    manifest()
    return {v: run(load_dit(dit_folder(v))[0], golden_inputs(v)) for v in VARIANTS}


def save_single_file(variant, path, dtype, prefix="", drop=()):
    """A kijai-style file: official names, optional prefix, Linear weights in ``dtype`` (fp8: rest bf16)."""
    state_dict = load_state_dict(dit_folder(variant))
    save_file({prefix + k: t.to(target_dtype(k, t, dtype)) for k, t in state_dict.items() if k not in drop}, path)
    return path


@pytest.mark.parametrize("variant", VARIANTS)
def test_detection_on_golden_folders(variant):
    root = checkpoint_root(variant)
    assert identify_checkpoint(load_state_dict(dit_folder(variant))) == f"dit_{variant}"
    assert identify_checkpoint(load_state_dict(os.path.join(root, "causal_video_vae"))) == "vae"
    for folder in variant_info(variant)["folders"]:
        if folder.startswith("text_encoder"):
            with open(os.path.join(root, folder, "config.json"), encoding="utf-8") as f:
                expected = "t5" if json.load(f)["model_type"] == "t5" else "clip"
            assert identify_checkpoint(load_state_dict(os.path.join(root, folder))) == expected
    model, info = load_dit(dit_folder(variant))
    assert info.variant == variant and isinstance(model, CLASSES[variant])
    assert info.source_dtype == torch.float32


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.bfloat16, FP8], ids=["bf16", "fp8"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_single_file_round_trip(variant, dtype, prefix, tmp_path, reference):
    path = save_single_file(variant, str(tmp_path / "dit.safetensors"), dtype, prefix)
    model, info = load_dit(path)
    assert info.variant == variant and info.source_dtype == dtype
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with open(os.path.join(dit_folder(variant), "config.json"), encoding="utf-8") as f:
        official = json.load(f)
    inferred = infer_config(variant, model.state_dict(), path)
    assert {k: official[k] for k in inferred} == inferred
    assert all(info.config[k] == v for k, v in inferred.items())
    assert relative_error(run(model, golden_inputs(variant)), reference[variant]) < REL_TOL[dtype]


@pytest.mark.bf16
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp8_storage_with_casting_operations(variant, tmp_path, reference):
    path = save_single_file(variant, str(tmp_path / "dit.safetensors"), FP8)
    model, _ = load_dit(path, dtype=FP8, operations=CAST_OPS)
    linear_dtypes = {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert linear_dtypes == {FP8}
    assert {p.dtype for n, p in model.named_parameters() if not n.endswith(".weight") or p.ndim != 2} == {torch.bfloat16}
    out = run(model, golden_inputs(variant), torch.bfloat16)
    assert relative_error(out, reference[variant]) < REL_TOL[FP8]


@pytest.mark.bf16
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_model(variant, reference):
    model, _ = load_dit(dit_folder(variant), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = run(model, golden_inputs(variant), torch.bfloat16)
    assert relative_error(out, reference[variant]) < 0.05  # the official bf16 run is ~0.01 away


def test_sd3_sincos_table_computed_when_absent(tmp_path, reference):
    model, _ = load_dit(dit_folder("sd3"))
    # ours (torch float64 sin/cos) against the table the official code stored (numpy): another implementation
    assert_within_ulps(model.pos_embed.sincos_table(), load_state_dict(dit_folder("sd3"))["pos_embed.pos_embed"])
    # A folder without the buffer: its size comes from config.json (a lone file would assume the real 192).
    shutil.copy(os.path.join(dit_folder("sd3"), "config.json"), tmp_path / "config.json")
    save_single_file("sd3", str(tmp_path / "diffusion_pytorch_model.safetensors"), torch.float32, drop=("pos_embed.pos_embed",))
    assert_within_ulps(run(load_dit(str(tmp_path))[0], golden_inputs("sd3")), reference["sd3"], name="sd3 computed table")


@pytest.mark.parametrize("variant", VARIANTS)
def test_bin_folder_through_weights_only(variant, tmp_path, reference):
    shutil.copy(os.path.join(dit_folder(variant), "config.json"), tmp_path / "config.json")
    torch.save(load_state_dict(dit_folder(variant)), tmp_path / "diffusion_pytorch_model.bin")
    model, info = load_dit(str(tmp_path))
    assert info.variant == variant
    assert_within_ulps(run(model, golden_inputs(variant)), reference[variant], name=f"{variant} from .bin")  # another load path


class Payload:
    """Not a tensor: a weights_only load must refuse to unpickle it."""


def test_bin_with_objects_refused(tmp_path):
    torch.save({"x_embedder.weight": Payload()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_dit(str(tmp_path))


def test_vae_in_dit_slot(tmp_path):
    vae_file = find_weight_file(os.path.join(checkpoint_root("sd3"), "causal_video_vae"))
    with pytest.raises(CheckpointError, match="is a Pyramid Flow VAE checkpoint, not a DiT.*'Pyramid Flow VAE Loader'"):
        load_dit(vae_file)


def test_truncated_file(tmp_path):
    with open(find_weight_file(dit_folder("miniflux")), "rb") as f:
        data = f.read()
    path = tmp_path / "dit.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dit(str(path))


def test_fp16_refused():
    with pytest.raises(ValueError, match="float16"):
        load_dit(dit_folder("miniflux"), dtype=torch.float16)


def test_fp8_needs_casting_operations():
    with pytest.raises(ValueError, match="operations"):
        load_dit(dit_folder("miniflux"), dtype=FP8)

