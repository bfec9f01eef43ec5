"""Block-wise FP8 (`fp8_block`): float8_e4m3fn codes with one float32 scale per [bn, bk]
block of each linear weight, as DeepSeek-V3 / Qwen3-FP8 checkpoints ship it.

    s[i, j] = max(amax(|W[i·bn:(i+1)·bn, j·bk:(j+1)·bk]|) / M, floor)   float32
    q       = clamp(W / s[block], -M, M) -> e4m3fn                       nearest even
    W'      = q · s[block]

The scale is stored as `<linear>.weight_scale_inv` of shape [ceil(rows / bn),
ceil(cols / bk)]: the *dequantization multiplier*, despite its name. That is how both real
readers use it: vLLM registers `weight_scale_inv` as a BlockQuantScaleParameter and passes
it as the weight's scale `Bs` of `w8a8_block_fp8_matmul` (C = (A·As) @ (B·Bs)ᵀ), and
transformers' FineGrainedFP8 quantizer stores `(448 / amax).reciprocal()` under that name
and multiplies by it. Edge blocks may be partial (rows or cols not multiples of the block):
their amax is over the elements that exist.

Layouts (vLLM's `validate_fp8_block_shape`): a TP rank's output rows must be whole blocks
(column-parallel q/k/v/gate/up) and its input columns too (row-parallel o/down), or its
scale rows / columns would be shared with another rank; a loader that stacks q/k/v and
gate/up in one parameter (variant `fp8_block_fusion: fused`, vLLM) also needs every shard
to be whole blocks, or one block row would hold two matrices. Such layouts are refused
with UnsupportedLayoutError naming the module, the boundary and the block; a loader that
keeps separate modules (`per_module`, transformers) needs only the TP rule. Online block
quantization uses the declared `fp8_scale_op` and `fp8_scale_floor` (so a zero block gets
a finite scale under the default floor).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..contract import CONFIG_FILE, ModelSpec, QuantSpec, UnsupportedLayoutError
from ..names import FUSED_PROJECTIONS
from ..tp import RankSlice
from .fp8_tensor import (AMAX_EPS, FP8, FP8_MAX, M512_FLOOR, Fp8Rules, check_finite_weight)

__all__ = ["BLOCK_FP8", "BlockFp8", "scale_inv_name", "grid_shape", "expand_scales",
           "block_amax", "online_block_scales", "quantize_blocks", "dequantize_blocks",
           "quantize_block_weights", "scale_slice", "layout_problems"]

SCALE_SUFFIX = "weight_scale_inv"


def scale_inv_name(weight: str) -> str:
    """`...q_proj.weight` -> `...q_proj.weight_scale_inv`."""
    return weight + "_scale_inv"


def grid_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    """[ceil(rows / bn), ceil(cols / bk)]: one scale per block, partial edge blocks too."""
    (rows, cols), (bn, bk) = shape, block
    return (-(-rows // bn), -(-cols // bk))


def expand_scales(scales: torch.Tensor, shape: tuple[int, ...], block: tuple[int, int]
                  ) -> torch.Tensor:
    """Each block's scale at each of its elements: a [rows, cols] tensor."""
    (rows, cols), (bn, bk) = shape, block
    return scales.repeat_interleave(bn, dim=0)[:rows].repeat_interleave(bk, dim=1)[:, :cols]


def block_amax(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """amax(|W|) per block, float32, over the elements each block holds (zero padding
    of a partial edge block changes no maximum of magnitudes)."""
    (bn, bk), (rows, cols) = block, weight.shape
    grid = grid_shape(weight.shape, block)
    padded = torch.nn.functional.pad(weight.detach().float().abs(),
                                     (0, grid[1] * bk - cols, 0, grid[0] * bn - rows))
    return padded.reshape(grid[0], bn, grid[1], bk).amax(dim=(1, 3))


def online_block_scales(weight: torch.Tensor, block: tuple[int, int], rules: Fp8Rules
                        ) -> torch.Tensor:
    """The dynamic scale of every block, float32, with the declared floor."""
    amax = block_amax(weight, block)
    if rules.floor == "eps":
        amax = amax.clamp(min=AMAX_EPS)
    scale = amax / FP8_MAX
    return scale.clamp(min=M512_FLOOR) if rules.floor == "m512" else scale


def quantize_blocks(weight: torch.Tensor, scales: torch.Tensor, block: tuple[int, int],
                    rules: Fp8Rules) -> torch.Tensor:
    """FP8 codes of `weight`, each element at its block's scale (float32 arithmetic,
    `W / s` or `W * (1 / s)` as declared, saturating)."""
    s = expand_scales(scales.float(), weight.shape, block)
    x = weight.detach().float()
    scaled = x / s if rules.scale_op == "divide" else x * s.reciprocal()
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def dequantize_blocks(codes: torch.Tensor, scales: torch.Tensor, block: tuple[int, int],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """codes · weight_scale_inv[block], in `dtype`."""
    return codes.to(dtype) * expand_scales(scales.to(dtype), codes.shape, block)


def quantize_block_weights(weights: Mapping[str, torch.Tensor], block: tuple[int, int],
                           rules: Fp8Rules, only: set[str] | None = None
                           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Online block quantization: name -> (codes, weight_scale_inv). Every matrix is its own
    unit (blocks never span two matrices); with `only`, just the weights in it. Non-finite
    weights are refused."""
    out = {}
    for name, weight in weights.items():
        if only is not None and name not in only:
            continue
        check_finite_weight(name, weight)
        scales = online_block_scales(weight, block, rules)
        out[name] = (quantize_blocks(weight, scales, block, rules), scales)
    return out


def scale_slice(piece: RankSlice | None, block: tuple[int, int]) -> RankSlice | None:
    """The rows (dim 0, in blocks of bn) or columns (dim 1, blocks of bk) of a scale grid
    that belong to a rank holding `piece` of the weight (on block boundaries: see
    `layout_problems`; a partial last block belongs to the last rank)."""
    if piece is None:
        return None
    size = block[piece.dim]
    return RankSlice(piece.dim, piece.start // size, -(-piece.stop // size))


def _module_sizes(spec: ModelSpec, tp_size: int) -> dict[str, tuple[int, int]]:
    """module -> (output rows, input columns) one rank holds."""
    kv_rows = spec.kv_size // tp_size if tp_size <= spec.num_kv_heads else spec.head_dim
    h, i = spec.hidden_size, spec.intermediate_size
    return {"self_attn.q_proj": (spec.q_size // tp_size, h), "self_attn.k_proj": (kv_rows, h),
            "self_attn.v_proj": (kv_rows, h), "self_attn.o_proj": (h, spec.q_size // tp_size),
            "mlp.gate_proj": (i // tp_size, h), "mlp.up_proj": (i // tp_size, h),
            "mlp.down_proj": (h, i // tp_size)}


def layout_problems(spec: ModelSpec, block: tuple[int, int], tp_size: int, fusion: str
                    ) -> list[str]:
    """Why block FP8 with `block` cannot be laid out for this spec and tp_size (empty: it
    can). See the module docstring for the rules."""
    bn, bk = block
    sizes, problems = _module_sizes(spec, tp_size), []
    if tp_size > 1:
        for module, (rows, cols) in sizes.items():
            if module.endswith(("o_proj", "down_proj")) and cols % bk:
                problems.append(f"{module}: a rank's {cols} input columns (tp_size={tp_size}) "
                                f"are not a multiple of block_k={bk}")
            elif not module.endswith(("o_proj", "down_proj")) and rows % bn:
                problems.append(f"{module}: a rank's {rows} output rows (tp_size={tp_size}) "
                                f"are not a multiple of block_n={bn}")
    if fusion == "fused":
        for fused, parts in FUSED_PROJECTIONS.items():
            start = 0
            for before, part in zip(parts, parts[1:]):
                start += sizes[before][0]
                if start % bn:
                    problems.append(
                        f"{fused}: {part.split('.')[1]} starts at row {start} of the fused "
                        f"parameter, not a multiple of block_n={bn}: block row {start // bn} "
                        f"would hold rows of {before.split('.')[1]} and {part.split('.')[1]}")
    return problems


class BlockFp8:
    """The `fp8_block` QuantFormat."""

    name = "fp8_block"
    scale_suffix = SCALE_SUFFIX
    capabilities = ("fp8_block_serialized", "fp8_block_online")
    weight_dtype = FP8
    scale_dtype = torch.float32
    fixed_block = None

    def stored_weight_shape(self, quant: QuantSpec, shape: tuple[int, int]
                            ) -> tuple[int, int]:
        return shape

    def stored_slice(self, quant: QuantSpec, piece: RankSlice | None, tensor: str
                     ) -> RankSlice | None:
        return piece if tensor == "weight" else scale_slice(piece, quant.block)

    def tensor_shapes(self, quant: QuantSpec, weight: str, shape: tuple[int, int]
                      ) -> dict[str, tuple[int, ...]]:
        return {scale_inv_name(weight): grid_shape(shape, quant.block)}

    def quantization_config(self, quant: QuantSpec) -> dict[str, Any]:
        """vLLM's Fp8Config and transformers' FineGrainedFP8Config read the same form."""
        return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": list(quant.block)}

    def dequantize(self, quant: QuantSpec, codes: torch.Tensor, scale: torch.Tensor
                   ) -> torch.Tensor:
        return dequantize_blocks(codes, scale, quant.block)

    def check_layout(self, quant: QuantSpec, spec: ModelSpec, tp_size: int,
                     variants: Mapping[str, str]) -> None:
        problems = layout_problems(spec, quant.block, tp_size, variants["fp8_block_fusion"])
        if problems:
            raise UnsupportedLayoutError(
                f"block FP8 [{quant.block[0]}, {quant.block[1]}] cannot be laid out: "
                + "; ".join(problems), subject=CONFIG_FILE)


BLOCK_FP8 = BlockFp8()
