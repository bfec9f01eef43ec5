"""Dtype tables: safetensors codes, dtype classes, conversion rules and poison patterns."""

from __future__ import annotations

import torch

__all__ = ["SAFETENSORS_CODES", "DTYPE_OF_CODE", "PLAIN_FLOATS", "FP8_DTYPES",
           "dtype_class", "can_cast", "cast_float", "poison_", "poison_mask", "copy_bytes_",
           "clone_bytes"]

# safetensors dtype code <-> torch dtype, for every dtype both sides know.
SAFETENSORS_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
                     ("float8_e8m0fnu", "F8_E8M0")):
    if hasattr(torch, _name):
        SAFETENSORS_CODES[getattr(torch, _name)] = _code
DTYPE_OF_CODE: dict[str, torch.dtype] = {code: dt for dt, code in SAFETENSORS_CODES.items()}

# Floats that round-to-nearest-even into one another; everything else must match exactly.
PLAIN_FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})
FP8_DTYPES = frozenset(d for d in (torch.float8_e4m3fn, torch.float8_e5m2,
                                   getattr(torch, "float8_e4m3fnuz", None),
                                   getattr(torch, "float8_e5m2fnuz", None),
                                   getattr(torch, "float8_e8m0fnu", None)) if d is not None)


def dtype_class(dtype: torch.dtype) -> str:
    """'float', 'fp8', 'bool' or 'int': the classes the dtype rules talk about."""
    if dtype in PLAIN_FLOATS:
        return "float"
    if dtype in FP8_DTYPES:
        return "fp8"
    if dtype == torch.bool:
        return "bool"
    return "int"


def can_cast(source: torch.dtype, target: torch.dtype) -> bool:
    """Plain floats cast to plain floats (round to nearest even); others keep their dtype."""
    return source == target or (source in PLAIN_FLOATS and target in PLAIN_FLOATS)


def _float32_round_to_odd(source: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 rounded to odd: an inexact result takes the neighbour whose last
    bit is 1. float32 keeps at least two more bits than bfloat16 or float16 (in every
    exponent range either can reach), so rounding this to nearest even once more gives
    exactly the nearest-even rounding of the float64 value: the round-to-odd theorem."""
    nearest = source.to(torch.float32)
    back = nearest.to(torch.float64)
    inexact = (back != source) & source.isfinite() & nearest.isfinite()
    even = (nearest.view(torch.int32) & 1) == 0
    toward = torch.where(source > back, torch.inf, -torch.inf).to(torch.float32)
    return torch.where(inexact & even, torch.nextafter(nearest, toward), nearest)


def cast_float(source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`source` in plain-float `dtype`, rounded once to nearest even. torch's own float64 ->
    bfloat16 / float16 conversion goes through float32 and rounds twice: 1 + 2^-8 + 2^-30
    becomes 1.0 in bfloat16 where one rounding gives 1.0078125. Every other pair of plain
    floats converts exactly into float32 first, so torch's conversion is already exact."""
    if source.dtype == torch.float64 and dtype in (torch.bfloat16, torch.float16):
        return _float32_round_to_odd(source).to(dtype)
    return source.to(dtype)


# Poison: all-ones bytes are a NaN in every float and FP8 format and -1 / max in the
# integers; generated float data is finite, so a surviving NaN is always poison. A bool
# holds only 0 or 1, so its poison is True (and a poison mask of bools says little).
def poison_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill `tensor` in place with its dtype's poison pattern."""
    if tensor.dtype == torch.bool:
        return tensor.fill_(True)
    if tensor.is_contiguous():  # bytes directly: sub-byte dtypes have no copy kernel
        tensor.reshape(-1).view(torch.uint8).fill_(0xFF)
        return tensor
    pattern = torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    pattern.reshape(-1).view(torch.uint8).fill_(0xFF)
    return tensor.copy_(pattern)


def poison_mask(tensor: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the elements of `tensor` that still hold the poison pattern."""
    if tensor.dtype == torch.bool:
        return tensor.clone()
    flat = tensor.contiguous().reshape(-1).view(torch.uint8).reshape(tensor.numel(), -1)
    return (flat == 0xFF).all(dim=1).reshape(tensor.shape)


def copy_bytes_(dest: torch.Tensor, source: torch.Tensor, non_blocking: bool = False
                ) -> torch.Tensor:
    """Copy contiguous `source` into contiguous `dest` (same dtype and shape) as bytes:
    exact for every dtype, and the sub-byte dtypes have no copy kernel."""
    dest.reshape(-1).view(torch.uint8).copy_(source.reshape(-1).view(torch.uint8),
                                             non_blocking=non_blocking)
    return dest


def clone_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A byte-exact copy of `tensor` (contiguous), for any dtype."""
    return copy_bytes_(torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device),
                       tensor.contiguous())
