"""MXFP4 divergences per logical matrix, named by block: the matrix (and its slot in the
fused parameter a loader like vLLM keeps), the first block (row, 32-column group) that
differs, both sides' E8M0 scale there (as 2^k and its byte), and the codes that differ in
it (column, expected code -> found code, as E2M1 values).

Registered for `mxfp4`: tensor divergences on an MXFP4 weight (packed uint8) or its
`weight_scale` (from `compare_states`) are replaced by one message per matrix; everything
else passes through unchanged; declines for every other format.
"""

from __future__ import annotations

from typing import Mapping

import torch

from reference.contract import LoadOptions, ModelSpec
from reference.dtypes import poison_mask
from reference.quant.mxfp4 import (E2M1_VALUES, E8M0_BIAS, E8M0_NAN, GROUP,
                                   dequantize_mxfp4, unpack_codes)
from .compare import Divergence
from .quant_compare import matrix_divergence, matrix_tensors, register

__all__ = ["scale_text", "mxfp4_divergence", "refine_mxfp4"]

_SHOWN_CODES = 4  # differing codes listed per message


def scale_name(weight: str) -> str:
    """`...q_proj.weight` -> `...q_proj.weight_scale`."""
    return weight + "_scale"


def scale_text(scales: torch.Tensor | None, row: int, group: int) -> str:
    """One E8M0 scale as `2^k (byte b)`, `absent`, or the poison note."""
    if scales is None or scales.dim() != 2 or row >= scales.shape[0] \
            or group >= scales.shape[1]:
        return "absent"
    value = scales[row:row + 1, group:group + 1].detach().cpu()
    if bool(poison_mask(value).all()):
        return f"byte {E8M0_NAN:#x} (the poison pattern: never written)"
    if value.dtype != torch.uint8:
        return f"{value.float().item():.6g} (a {str(value.dtype)[6:]} value, not an E8M0 byte)"
    byte = int(value.item())
    return "NaN (byte 0xff)" if byte == E8M0_NAN else f"2^{byte - E8M0_BIAS} (byte {byte})"


def _groups_differing(w_c: torch.Tensor, g_c: torch.Tensor, w_s: torch.Tensor,
                      g_s: torch.Tensor) -> torch.Tensor:
    """A [rows, groups] mask of the blocks whose scale or any code differs."""
    codes = unpack_codes(w_c.cpu()) != unpack_codes(g_c.cpu())
    rows, groups = w_s.shape
    padded = torch.nn.functional.pad(codes, (0, groups * GROUP - codes.shape[1]))
    return (w_s.cpu() != g_s.cpu()) | padded.reshape(rows, groups, GROUP).any(dim=-1)


def _codes_text(w_c: torch.Tensor, g_c: torch.Tensor, row: int, group: int) -> tuple[int, str]:
    """(how many codes differ in block (row, group), the first few as `col: a -> b`)."""
    cols = slice(group * GROUP, (group + 1) * GROUP)
    want, got = unpack_codes(w_c[row:row + 1].cpu())[0, cols], unpack_codes(
        g_c[row:row + 1].cpu())[0, cols]
    where = (want != got).nonzero().flatten().tolist()
    shown = ", ".join(f"col {group * GROUP + i}: code {int(want[i])} ({E2M1_VALUES[want[i]]:g})"
                      f" -> {int(got[i])} ({E2M1_VALUES[got[i]]:g})"
                      for i in where[:_SHOWN_CODES])
    return len(where), shown + (", ..." if len(where) > _SHOWN_CODES else "")


def mxfp4_divergence(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                     weight: str) -> Divergence | None:
    """One divergence for `weight`'s packed codes and E8M0 scales, or None if both equal."""
    scale = scale_name(weight)
    parts = matrix_tensors(expected, found, weight, scale)
    if parts is None:
        return None
    problems, slot, matrix, named, codes_d, scale_d, (w_c, g_c, w_s, g_s) = parts
    comparable = all(t is not None for t in (w_c, g_c, w_s, g_s)) and all(
        t.dtype == torch.uint8 and not t.is_meta for t in (g_c, g_s)) \
        and g_c.shape == w_c.shape and g_s.shape == w_s.shape
    detail: dict = {"matrix": matrix, "slot": slot.text() if slot else "", "group": GROUP}
    if comparable:
        mask = _groups_differing(w_c, g_c, w_s, g_s)
        where = mask.nonzero()
        r, c = (int(where[0][0]), int(where[0][1])) if len(where) else (0, 0)
        exp_s, got_s = scale_text(w_s, r, c), scale_text(g_s, r, c)
        differing, shown = _codes_text(w_c, g_c, r, c)
        deq = (dequantize_mxfp4(g_c.cpu(), g_s.cpu()) - dequantize_mxfp4(w_c.cpu(), w_s.cpu())
               ).abs()
        error = float(deq.nan_to_num(float("inf")).max()) if deq.numel() else 0.0
        finding = "unwritten" if "poison" in got_s else ("scale" if exp_s != got_s else "codes")
        cols = (c * GROUP, min((c + 1) * GROUP, w_c.shape[1] * 2))
        headline = (f"{named}: block (row {r}, group {c}) (cols {cols[0]}:{cols[1]}, MXFP4 "
                    f"group of {GROUP}): weight_scale expected {exp_s}, found {got_s}; "
                    f"{differing} codes differ in that block" + (f" ({shown})" if shown else "")
                    + f"; {int(mask.sum())} of {mask.numel()} blocks differ; over the whole "
                    f"matrix the dequantized weight is off by up to {error:.4g}")
        detail.update(block=[r, c], expected_scale=exp_s, found_scale=got_s,
                      codes_differing_in_block=differing, dequantized_max_abs_diff=error)
    return matrix_divergence(weight, named, slot, problems, codes_d, scale_d, "weight_scale",
                             detail, (headline, finding, error) if comparable else None, w_c)


@register("mxfp4")
def refine_mxfp4(divergences: list[Divergence], expected: Mapping[str, torch.Tensor],
                 found: Mapping[str, torch.Tensor], spec: ModelSpec,
                 options: LoadOptions | None = None) -> list[Divergence]:
    """One divergence per MXFP4 matrix (in model order); declines for other formats."""
    if spec.quant is None or spec.quant.format != "mxfp4":
        return divergences
    weights = [w for w in spec.quantized_weights() if scale_name(w) in expected]
    owned = {n: w for w in weights for n in (w, scale_name(w))}
    hit = [w for w in weights if any(owned.get(d.subject) == w for d in divergences)]
    rest = [d for d in divergences if d.subject not in owned]
    return [d for w in hit for d in [mxfp4_divergence(expected, found, w)] if d] + rest
