"""MXFP4 (`mxfp4`, OCP Microscaling FP4): 4-bit E2M1 codes packed two per byte, one E8M0
power-of-two scale per 32 elements along each row (the input dimension) of a linear weight.

    codes   [N, K/2]  uint8: element 2j in the low nibble of byte j, 2j+1 in the high one
    scales  [N, ceil(K/32)]  uint8 E8M0: 2^(byte - 127); 0xFF is NaN
    W'[n, k] = E2M1[code(n, k)] · 2^(scales[n, k // 32] - 127)                 exact

Nibble order: low nibble = even element, as every reader of the format does it:
transformers' `convert_moe_packed_tensors` (integrations/mxfp4.py, from gpt-oss:
`sub[:, 0::2] = lut[blk & 0x0F]; sub[:, 1::2] = lut[blk >> 4]`), triton_kernels'
`downcast_to_mxfp_torch` (`evens | (odds << 4)`), compressed-tensors' FP4 packing and
vLLM's OCP-MX (Quark) dequantization. The E2M1 table (sign bit 3, exponent bits 2-1,
mantissa bit 0) is 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (code 8 is -0).
The scale is `ldexp(1, byte - 127)` (transformers: `scales.to(int32) - 127` then
`torch.ldexp`; compressed-tensors' `maybe_convert_from_mx_exp`). Dequantization is exact
in float32 for every scale byte 0..252 (a product of a 3-significant-bit code and a power
of two); 253 and 254 overflow float32 for the largest codes, and 0xFF is NaN (the OCP MX
spec; transformers' ldexp reads it as 2^128 = inf): the generators write bytes 2..252, where
every code times every scale is a normal float32 (bytes 0 and 1 give subnormal products,
and triton_kernels' bit-shift upcast reads byte 0 as 0.0, not 2^-127).

Checkpoint form: `<linear>.weight` uint8 [N, K/2] and `<linear>.weight_scale` uint8
[N, ceil(K/32)], as vLLM's Quark OCP-MX scheme registers them (`weight`, `weight_scale`,
`weight_block_size = [1, 32]`), with Quark's `quantization_config` (weight dtype fp4,
per_group, group_size 32, scale_format e8m0). compressed-tensors' `mxfp4-pack-quantized`
stores the same bytes under `weight_packed` (vLLM renames it to `weight` after loading).
A last group of fewer than 32 elements (K not a multiple of 32) is partial: its scale
covers the elements that exist (triton_kernels pads the row to 32); K must be even.

Online quantization (reference rule, `quantize_mxfp4`): triton_kernels'
`downcast_to_mxfp_torch` with its default DequantScaleRoundingMode.ROUND_UP, which
transformers' `Mxfp4Quantize` / `quantize_to_mxfp4` calls: scale = amax(group) / 6 rounded
*up* to a power of two (its float32 bits `+ 0x7FFFFF` then `& 0x7F800000`: no element
saturates), byte = that exponent field (0 for an all-zero group); each element x / scale
to the nearest E2M1 value, ties away from zero (its bit rounding of the top two mantissa
bits), sign kept (-0 is code 8), saturating at 6. (compressed-tensors rounds amax to a
power of two first and subtracts floor(log2 6) = 2 instead: another rule, not this one.)

Layouts: q/k/v and gate/up stack rows, and a group never spans rows, so fusion needs
nothing. A TP rank of a row-parallel linear (o_proj, down_proj) holds input columns: they
must start on a 32-element group boundary, or one scale would serve two ranks; such a
layout is refused with UnsupportedLayoutError naming the module and the column
(`layout_problems`). A rank's packed columns are its columns / 2, its scale columns / 32.

Nothing here knows about Hypothesis or pytest.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..contract import CONFIG_FILE, ModelSpec, QuantSpec, UnsupportedLayoutError
from ..tp import RankSlice

__all__ = ["MXFP4", "Mxfp4", "GROUP", "E8M0_BIAS", "E8M0_NAN", "E2M1_VALUES", "SCALE_BYTES",
           "unpack_codes", "pack_codes", "e8m0_to_float", "dequantize_mxfp4",
           "e2m1_codes", "scale_bytes_round_up", "quantize_mxfp4", "scale_columns",
           "layout_problems"]

GROUP = 32            # elements per E8M0 scale, along the input dimension
E8M0_BIAS = 127
E8M0_NAN = 0xFF
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
E2M1_MAX = 6.0
# scale bytes where every code times the scale is a finite normal float32 (see above)
SCALE_BYTES = range(2, 253)
SCALE_SUFFIX = "weight_scale"
# midpoints between neighbouring E2M1 magnitudes: a magnitude at or above one rounds up
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def scale_columns(cols: int) -> int:
    """Scale columns of a row of `cols` elements: ceil(cols / 32) (a partial last group)."""
    return -(-cols // GROUP)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """[N, K/2] packed bytes -> [N, K] E2M1 codes (0..15): low nibble first."""
    b = packed.to(torch.uint8)
    return torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] E2M1 codes (0..15, K even) -> [N, K/2] bytes: element 2j low, 2j+1 high."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def e8m0_to_float(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> float32 2^(byte - 127) (exact; 0xFF is NaN)."""
    exponent = scales.to(torch.int32) - E8M0_BIAS
    value = torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)
    return torch.where(scales.to(torch.int32) == E8M0_NAN, torch.nan, value)


def dequantize_mxfp4(packed: torch.Tensor, scales: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] matrix that packed codes and their E8M0 scales stand for (exact in
    float32 for scale bytes 0..252), in `dtype`."""
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)[
        unpack_codes(packed).long()]
    expanded = e8m0_to_float(scales).repeat_interleave(GROUP, dim=-1)[..., :values.shape[-1]]
    return (values * expanded).to(dtype)


def e2m1_codes(scaled: torch.Tensor) -> torch.Tensor:
    """E2M1 codes of already-scaled float32 values: nearest magnitude, ties away from zero,
    saturating at 6, the sign bit kept (as triton_kernels' `downcast_to_mxfp_torch`)."""
    magnitude = scaled.abs()
    index = torch.zeros_like(magnitude, dtype=torch.uint8)
    for midpoint in _MIDPOINTS:
        index += (magnitude >= midpoint).to(torch.uint8)
    return index | (torch.signbit(scaled).to(torch.uint8) << 3)


def scale_bytes_round_up(amax: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes of amax / 6 rounded up to a power of two (triton_kernels' ROUND_UP:
    float32 bits + 0x7FFFFF, exponent field kept); 0 for a zero group."""
    bits = (amax.float() / E2M1_MAX).contiguous().view(torch.int32)
    return (((bits + 0x7FFFFF) & 0x7F800000) >> 23).to(torch.uint8)


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online MXFP4 of one [N, K] matrix (K even): (packed codes, E8M0 scale bytes), by
    triton_kernels' ROUND_UP rule (module docstring). Non-finite weights are refused."""
    rows, cols = weight.shape
    if cols % 2:
        raise ValueError(f"MXFP4 packs two codes per byte: {cols} columns is odd")
    x = weight.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("MXFP4 quantization of a non-finite weight")
    groups = scale_columns(cols)
    padded = torch.nn.functional.pad(x.abs(), (0, groups * GROUP - cols))
    scales = scale_bytes_round_up(padded.reshape(rows, groups, GROUP).amax(dim=-1))
    step = e8m0_to_float(scales)
    inverse = torch.where(step == 0, 0.0, step.reciprocal())  # an all-zero group: codes 0
    scaled = x * inverse.repeat_interleave(GROUP, dim=1)[:, :cols]
    return pack_codes(e2m1_codes(scaled)), scales


def _row_parallel_columns(spec: ModelSpec, tp_size: int) -> dict[str, int]:
    """Input columns one rank holds of each row-parallel linear."""
    return {"self_attn.o_proj": spec.q_size // tp_size,
            "mlp.down_proj": spec.intermediate_size // tp_size}


def _input_columns(spec: ModelSpec) -> dict[str, int]:
    h = spec.hidden_size
    return {"self_attn.q_proj": h, "self_attn.k_proj": h, "self_attn.v_proj": h,
            "self_attn.o_proj": spec.q_size, "mlp.gate_proj": h, "mlp.up_proj": h,
            "mlp.down_proj": spec.intermediate_size}


def layout_problems(spec: ModelSpec, tp_size: int) -> list[str]:
    """Why MXFP4 cannot be laid out for this spec and tp_size (empty: it can)."""
    problems = [f"{module}: {cols} input columns is odd (MXFP4 packs two codes per byte)"
                for module, cols in _input_columns(spec).items() if cols % 2]
    if tp_size > 1:
        for module, cols in _row_parallel_columns(spec, tp_size).items():
            if cols % GROUP:
                problems.append(
                    f"{module}: rank 1 starts at input column {cols} (tp_size={tp_size}), not "
                    f"a multiple of the MXFP4 group of {GROUP}: scale group {cols // GROUP} "
                    f"would hold columns of ranks 0 and 1")
    return problems


class Mxfp4:
    """The `mxfp4` QuantFormat."""

    name = "mxfp4"
    scale_suffix = SCALE_SUFFIX
    capabilities = ("mxfp4_serialized",)
    weight_dtype = torch.uint8
    scale_dtype = torch.uint8
    fixed_block = (1, GROUP)  # one scale per row and 32 input columns

    def stored_weight_shape(self, quant: QuantSpec, shape: tuple[int, int]
                            ) -> tuple[int, int]:
        return (shape[0], shape[1] // 2)

    def tensor_shapes(self, quant: QuantSpec, weight: str, shape: tuple[int, int]
                      ) -> dict[str, tuple[int, ...]]:
        return {weight[: -len("weight")] + SCALE_SUFFIX: (shape[0], scale_columns(shape[1]))}

    def stored_slice(self, quant: QuantSpec, piece: RankSlice | None, tensor: str
                     ) -> RankSlice | None:
        """A rank's piece of the packed weight (`tensor="weight"`) or of its scales, from
        its piece of the logical [N, K] matrix: rows as they are; columns / 2 or / 32."""
        if piece is None or piece.dim == 0:
            return piece
        per = 2 if tensor == "weight" else GROUP
        return RankSlice(1, piece.start // per, -(-piece.stop // per))

    def quantization_config(self, quant: QuantSpec) -> dict[str, Any]:
        """Quark's OCP-MX form, as vLLM's QuarkConfig reads it (weight-only MXFP4)."""
        weight = {"dtype": "fp4", "qscheme": "per_group", "group_size": GROUP, "ch_axis": -1,
                  "is_dynamic": False, "scale_format": "e8m0", "symmetric": None,
                  "round_method": None, "observer_cls": "PerBlockMXObserver"}
        return {"quant_method": "quark", "export": {"weight_format": "real_quantized",
                                                    "pack_method": "reorder"},
                "global_quant_config": {"weight": weight, "input_tensors": None,
                                        "output_tensors": None, "bias": None},
                "layer_quant_config": {}, "exclude": ["lm_head"]}

    def dequantize(self, quant: QuantSpec, codes: torch.Tensor, scale: torch.Tensor
                   ) -> torch.Tensor:
        return dequantize_mxfp4(codes, scale)

    def check_layout(self, quant: QuantSpec, spec: ModelSpec, tp_size: int,
                     variants: Mapping[str, str]) -> None:
        problems = layout_problems(spec, tp_size)
        if problems:
            raise UnsupportedLayoutError("MXFP4 cannot be laid out: " + "; ".join(problems),
                                         subject=CONFIG_FILE)


MXFP4 = Mxfp4()
