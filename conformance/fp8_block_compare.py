"""Block FP8 divergences per logical matrix, named by block: the matrix (and its slot in
the fused parameter a loader like vLLM keeps), the first block (row, col) that differs, the
rows and columns it covers, and both sides' `weight_scale_inv` of that block.

Registered for `fp8_block`: tensor divergences on a block-quantized weight or its scale
grid (from `compare_states`) are replaced by one message per matrix; everything else passes
through unchanged. Also the per-block properties of online quantization: round trip within
half a code step and zero blocks.
"""

from __future__ import annotations

from typing import Mapping

import torch

from reference.contract import LoadOptions, ModelSpec
from reference.dtypes import FP8_DTYPES, poison_mask
from reference.fp8 import code_step
from reference.quant.fp8_block import dequantize_blocks, expand_scales, scale_inv_name
from .compare import Divergence, fused_slot
from .quant_compare import matrix_divergence, matrix_tensors, register

__all__ = ["block_of", "block_divergence", "refine_block_fp8", "block_round_trip_divergences"]


def block_of(spec: ModelSpec, options: LoadOptions | None) -> tuple[int, int] | None:
    """The [bn, bk] in play: the checkpoint's, or the online quantization's."""
    if spec.quant is not None and spec.quant.format == "fp8_block":
        return spec.quant.block
    return options.quant_block if options is not None else None


def _value(scales: torch.Tensor | None, r: int, c: int) -> str:
    if scales is None or scales.dim() != 2 or r >= scales.shape[0] or c >= scales.shape[1]:
        return "absent"
    value = scales[r:r + 1, c:c + 1].detach().float().cpu()
    note = " (the poison pattern: never written)" if bool(poison_mask(value).all()) else ""
    return f"{value.item():.6g}{note}"


def _differing_blocks(w_s: torch.Tensor, g_s: torch.Tensor, w_c: torch.Tensor,
                      g_c: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A [grid rows, grid cols] mask of the blocks whose scale or any code differs."""
    bn, bk = block
    scale_mask = w_s.float().cpu().view(torch.int32) != g_s.float().cpu().view(torch.int32)
    codes = w_c.cpu().view(torch.uint8) != g_c.cpu().view(torch.uint8)
    rows, cols = scale_mask.shape
    padded = torch.nn.functional.pad(codes, (0, cols * bk - codes.shape[1],
                                             0, rows * bn - codes.shape[0]))
    return scale_mask | padded.reshape(rows, bn, cols, bk).any(dim=3).any(dim=1)


def block_divergence(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                     weight: str, block: tuple[int, int]) -> Divergence | None:
    """One divergence for `weight`'s codes and scale grid, or None if both are equal."""
    scale = scale_inv_name(weight)
    parts = matrix_tensors(expected, found, weight, scale)
    if parts is None:
        return None
    problems, slot, matrix, named, codes_d, scale_d, (w_c, g_c, w_s, g_s) = parts
    comparable = all(t is not None for t in (w_c, g_c, w_s, g_s)) and \
        g_c.dtype in FP8_DTYPES and g_c.shape == w_c.shape and g_s.shape == w_s.shape \
        and g_s.dtype == w_s.dtype and not g_s.is_meta and not g_c.is_meta
    detail: dict = {"matrix": matrix, "slot": slot.text() if slot else "",
                    "block_size": list(block)}
    if comparable:
        mask = _differing_blocks(w_s, g_s, w_c, g_c, block)
        where = mask.nonzero()
        r, c = (int(where[0][0]), int(where[0][1])) if len(where) else (0, 0)
        bn, bk = block
        exp_s, got_s = _value(w_s, r, c), _value(g_s, r, c)
        rows = (r * bn, min((r + 1) * bn, w_c.shape[0]))
        cols = (c * bk, min((c + 1) * bk, w_c.shape[1]))
        in_block = int((w_c[rows[0]:rows[1], cols[0]:cols[1]].cpu().view(torch.uint8)
                        != g_c[rows[0]:rows[1], cols[0]:cols[1]].cpu().view(torch.uint8)).sum())
        deq = (dequantize_blocks(g_c.cpu(), g_s.cpu().float(), block)
               - dequantize_blocks(w_c.cpu(), w_s.cpu().float(), block)).abs()
        error = float(deq.nan_to_num(float("inf")).max()) if deq.numel() else 0.0
        finding = "unwritten" if "poison" in got_s else ("scale" if exp_s != got_s else "codes")
        headline = (f"{named}: block ({r}, {c}) (rows {rows[0]}:{rows[1]}, cols "
                    f"{cols[0]}:{cols[1]}, block {bn}x{bk}): weight_scale_inv expected "
                    f"{exp_s}, found {got_s}; {in_block} codes differ in that block; "
                    f"{int(mask.sum())} of {mask.numel()} blocks differ; over the whole matrix "
                    f"the dequantized weight is off by up to {error:.4g}")
        detail.update(block=[r, c], expected_scale=exp_s, found_scale=got_s,
                      dequantized_max_abs_diff=error)
    return matrix_divergence(weight, named, slot, problems, codes_d, scale_d,
                             "weight_scale_inv", detail,
                             (headline, finding, error) if comparable else None, w_c)


@register("fp8_block")
def refine_block_fp8(divergences: list[Divergence], expected: Mapping[str, torch.Tensor],
                     found: Mapping[str, torch.Tensor], spec: ModelSpec,
                     options: LoadOptions | None = None) -> list[Divergence]:
    """One divergence per block-quantized matrix (in model order); declines when no block
    scale grid is in the reference's state."""
    block = block_of(spec, options)
    weights = [w for w in spec.quantized_weights() if scale_inv_name(w) in expected]
    if block is None or not weights:
        return divergences
    owned = {n: w for w in weights for n in (w, scale_inv_name(w))}
    hit = [w for w in weights if any(owned.get(d.subject) == w for d in divergences)]
    rest = [d for d in divergences if d.subject not in owned]
    return [d for w in hit for d in [block_divergence(expected, found, w, block)] if d] + rest


def block_round_trip_divergences(weights: Mapping[str, torch.Tensor],
                                 found: Mapping[str, torch.Tensor], spec: ModelSpec,
                                 block: tuple[int, int]) -> list[Divergence]:
    """Each block-quantized weight of `found` dequantizes to within half a code step (at
    its block's scale) of the float weight it came from, every scale is finite, and a zero
    block gives exactly zero: named by block, with the scale there."""
    out = []
    for name in spec.quantized_weights():
        codes, scales, w = found.get(name), found.get(scale_inv_name(name)), weights.get(name)
        if codes is None or scales is None or w is None or codes.dtype not in FP8_DTYPES \
                or codes.shape != w.shape or scales.dim() != 2:
            continue
        w, codes, scales = w.detach().float().cpu(), codes.cpu(), scales.detach().float().cpu()
        rows, cols = -(-w.shape[0] // block[0]), -(-w.shape[1] // block[1])
        if tuple(scales.shape) != (rows, cols):
            continue  # the state comparison names the shape
        s = expand_scales(scales, w.shape, block)
        got = codes.float() * s
        bound = s * code_step(codes) / 2 + w.abs() * 2.0 ** -20
        bad = ~((got - w).abs() <= bound) | ~torch.isfinite(s)
        if bool(bad.any()):
            i, j = (int(x) for x in bad.nonzero()[0])
            r, c = i // block[0], j // block[1]
            slot = fused_slot(name)
            matrix = f"{name[:-len('.weight')]}{' (' + slot.text() + ')' if slot else ''}"
            amax = float(w[r * block[0]:(r + 1) * block[0],
                           c * block[1]:(c + 1) * block[1]].abs().max())
            what = ("a zero block must get a finite scale and dequantize to exactly 0"
                    if amax == 0 else "dequantizes more than half a code step away")
            out.append(Divergence(
                "fp8", name, f"{matrix}: block ({r}, {c}) (block {block[0]}x{block[1]}): "
                f"{what}: weight_scale_inv expected amax/448 = "
                f"{amax / 448:.6g}"
                f" (or its floor), found {float(scales[r, c]):.6g}; {int(bad.sum())} of "
                f"{w.numel()} weights off; first at [{i}, {j}]: weight {float(w[i, j]):.6g}, "
                f"dequantized {float(got[i, j]):.6g}",
                {"block": [r, c], "found_scale": float(scales[r, c])}))
    return out
