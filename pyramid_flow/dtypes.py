"""The dtypes the models are stored and run in, under the names the CLI and the nodes offer.

bf16 is what the models were trained in; fp32 is for devices without bf16; fp8 stores the DiT's Linear weights in
8 bits (computed in bf16 by layers that cast at run time). float16 is refused everywhere: the official models
overflow in it and give black or NaN frames.
"""

from typing import Dict

import torch

COMPUTE_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
FP8_DTYPES: Dict[str, torch.dtype] = {
    name: getattr(torch, "float8_" + name[4:]) for name in ("fp8_e4m3fn", "fp8_e5m2") if hasattr(torch, "float8_" + name[4:])
}
WEIGHT_DTYPES: Dict[str, torch.dtype] = {**COMPUTE_DTYPES, **FP8_DTYPES}


FP16_NAMES = ("fp16", "float16", "half")
FP16_REASON = ("fp16 gives black or NaN videos: the Pyramid Flow models overflow in float16 (the official README says "
               "so too). Use bf16, or fp32 on devices without bf16.")


def dtype_name_error(name: str, offered) -> str:
    """Why a dtype name is not offered: fp16's reason, or the names that are."""
    if name.lower() in FP16_NAMES:
        return FP16_REASON
    return f"'{name}' is not a dtype offered here; use one of {', '.join(offered)}."


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES.values()


def check_model_dtype(dtype: torch.dtype, what: str, fp8_allowed: bool = False) -> None:
    """A clear error for a dtype ``what`` (e.g. 'the Pyramid Flow VAE') cannot be stored in."""
    if dtype == torch.float16:
        raise ValueError(
            f"float16 is not supported for {what}: its activations overflow and give NaN / black frames (the official "
            "README says so too). Use torch.bfloat16 or torch.float32."
        )
    if is_fp8(dtype) and not fp8_allowed:
        raise ValueError(f"dtype {dtype} is not supported for {what}; use torch.bfloat16 or torch.float32.")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype {dtype} is not a floating-point dtype; use torch.bfloat16 or torch.float32.")


def compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype activations run in for weights stored in ``weight_dtype`` (fp8 storage computes in bf16)."""
    return torch.bfloat16 if is_fp8(weight_dtype) else weight_dtype
