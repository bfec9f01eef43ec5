"""Byte accounting: how many bytes a parameter occupies, for every torch dtype.

The rule is what torch allocates: `numel x dtype.itemsize`, the size of the parameter's
storage. That holds for every dtype, floats, every FP8 variant (e4m3fn, e5m2, the fnuz
pair, e8m0fnu), integers, unsigned integers and bool, and it decides the packed types too:
- `uint1..uint7` and `int1..int7` occupy one byte per element in a torch storage (they are
  not bit-packed), so a [3, 4] uint4 parameter is 12 bytes, not 6;
- `float4_e2m1fn_x2` counts a packed *pair* of FP4 values as one element of one byte;
- GPTQ / AWQ style packing into int32 words is the format's job: such a parameter *is*
  an int32 parameter and is counted as one.
Nothing here consults `torch.finfo` or `torch.iinfo` (finfo raises TypeError on integer
dtypes: seed 002), or parses dtype names (a regex that fails on `float8_e4m3fnuz`).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

__all__ = ["dtype_bytes", "parameter_bytes"]


def dtype_bytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """Bytes a contiguous tensor of `shape` and `dtype` occupies."""
    return math.prod(shape) * dtype.itemsize


def parameter_bytes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Canonical name -> bytes, for every tensor of a canonical state."""
    return {name: dtype_bytes(t.dtype, tuple(t.shape)) for name, t in state.items()}
