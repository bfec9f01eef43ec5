"""Tensors of every dtype.

Two sources. `tensors()` draws every element through Hypothesis (bytes for bit-pattern
dtypes, so FP8 reaches all 256 codes and integers their extremes); it is for small
tensors whose values matter one by one. `seeded_tensor()` fills a tensor from a drawn
seed; it is for checkpoint weights, where values must be distinct (so a swapped slice
shows) and generation must stay fast.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from reference.contract import torch_dtype
from reference.dtypes import FP8_DTYPES, PLAIN_FLOATS

__all__ = ["tensors", "seeded_tensor", "at_rounding_ties", "FP8_CODES"]

FP8_CODES = 256


def _from_bytes(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(
        0, dtype=torch.uint8)
    if dtype == torch.bool:
        return (flat & 1).to(torch.bool).reshape(shape)
    return flat.view(dtype).reshape(shape).clone()


@st.composite
def tensors(draw, dtype: str | torch.dtype, shape: tuple[int, ...], *,
            finite: bool = True) -> torch.Tensor:
    """A tensor whose every element Hypothesis chose. Plain floats are drawn as floats of
    the dtype's width (finite unless asked); everything else as raw bit patterns, NaN
    FP8 codes excluded when `finite`."""
    dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    numel = math.prod(shape)
    if dtype in PLAIN_FLOATS:
        width = {torch.float64: 64, torch.float32: 32, torch.float16: 16}.get(dtype, 32)
        # bfloat16 is drawn at width 32: bound it, or values near float32's max round to inf
        bound = float(torch.finfo(dtype).max) if finite else None
        values = draw(st.lists(st.floats(width=width, allow_nan=not finite,
                                         allow_infinity=not finite, min_value=
                                         -bound if bound else None, max_value=bound),
                               min_size=numel, max_size=numel))
        return torch.tensor(values, dtype=torch.float64).to(dtype).reshape(shape)
    raw = draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    out = _from_bytes(raw, dtype, shape)
    if finite and dtype in FP8_DTYPES and out.numel():
        out = torch.where(out.float().isfinite(), out.float(), 0.0).to(dtype)
    return out


def seeded_tensor(seed: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Distinct finite values for floats; the full value range for ints; every FP8 bit
    pattern first (when there is room), then random codes."""
    gen = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    if dtype in PLAIN_FLOATS:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).to(torch.bool)
    if dtype in FP8_DTYPES or dtype == torch.uint8 or dtype.itemsize == 1:
        codes = torch.randint(0, 256, (numel,), generator=gen, dtype=torch.int32)
        if numel >= FP8_CODES:
            codes[:FP8_CODES] = torch.arange(FP8_CODES)
        return codes.to(torch.uint8).view(dtype).reshape(shape)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -2**62), min(info.max, 2**62)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)


def _tie_above_even(values: torch.Tensor, target: torch.dtype) -> torch.Tensor:
    """The midpoint (float64) between each |value|'s even neighbour in `target` and the odd
    one just above it: round to nearest even goes down there, any other rounding up."""
    near = values.abs().to(torch.float32).to(target).view(torch.int16)
    even = near & ~1
    low, high = even.view(target).double(), (even + 1).view(target).double()
    return (low + high) / 2 * values.sign()


def at_rounding_ties(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (a plain float on disk) with every 4th element (from 1) moved onto a
    rounding tie of the conversions a loader makes from its dtype, so that each way of
    rounding other than once to nearest even shows: float32 holds exact bfloat16 and
    float16 ties; float64 holds those ties plus 2^-40 of themselves toward the odd
    neighbour (torch rounds float64 through float32 and lands on the tie: to even, wrong);
    float16 holds exact bfloat16 ties; bfloat16 holds float16's subnormal ties."""
    dtype = tensor.dtype
    if dtype not in PLAIN_FLOATS or tensor.numel() < 2:
        return tensor
    flat = tensor.double().reshape(-1).clone()
    picked = torch.arange(1, flat.numel(), 4)
    values = flat[picked]
    if dtype == torch.bfloat16:  # (4j + 1) * 2^-25: between float16 subnormals 4j and 4j + 2
        ties = (4 * (picked % 64) + 1).double() * 2.0**-25 * torch.where(values < 0, -1.0, 1.0)
    else:
        targets = [torch.bfloat16] if dtype == torch.float16 else [torch.bfloat16, torch.float16]
        ties = torch.where(picked % 8 == 1, _tie_above_even(values, targets[0]),
                           _tie_above_even(values, targets[-1]))
        if dtype == torch.float64:
            ties = ties + ties * 2.0**-40
    exact = (ties.to(dtype).double() == ties) & ties.isfinite() & (values != 0)
    flat[picked] = torch.where(exact, ties, values)
    return flat.to(dtype).reshape(tensor.shape)
