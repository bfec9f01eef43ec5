"""FP8 divergences per logical matrix: the codes, the effective scale and the dequantized
weight of one q/k/v/o/gate/up/down matrix, named with its slot in the fused parameter a
loader like vLLM keeps, so that a wrong scale slot reads as exactly that.

Tensor divergences on a quantized weight or its scales (from `compare_states`) are
replaced by one message per matrix; everything else passes through unchanged.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from reference.contract import ModelSpec
from reference.dtypes import FP8_DTYPES, poison_mask
from reference.fp8 import FP8, FP8_MAX, code_step, dequantize, input_scale_name, scale_name
from reports.schema import Diffs
from .compare import Divergence, compare_tensor, fused_slot
from .quant_compare import register

__all__ = ["slot_of", "fp8_divergences", "refine_fp8", "zero_weight_divergences",
           "round_trip_divergences", "codes_within_one_step", "code_agreement", "fp8_matmul_tolerance",
           "scaled_mm_divergences"]


def slot_of(weight: str) -> str:
    """`model.layers.0.self_attn.k_proj.weight` -> 'slot 1 (k_proj) of
    model.layers.0.self_attn.qkv_proj'; a matrix outside any fused group -> ''."""
    slot = fused_slot(weight)
    return slot.text() if slot else ""


def _scale_text(t: torch.Tensor | None) -> str:
    if t is None:
        return "absent"
    t = t.detach().float().cpu().reshape(-1)
    if t.numel() == 1:
        value = t[0]
        note = " (the poison pattern: never written)" if bool(poison_mask(t).all()) else ""
        return f"{value.item():.6g}{note}"
    return f"{t.numel()} per-row values in [{t.min().item():.4g}, {t.max().item():.4g}]"


def _dequantized_error(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                       weight: str) -> float | None:
    """The largest difference between the two dequantized weights, each with its own scale
    (None when either side is not FP8 codes with a scale that fits them)."""
    w_exp, w_got = expected.get(weight), found.get(weight)
    s_exp, s_got = expected.get(scale_name(weight)), found.get(scale_name(weight))
    if w_exp is None or w_got is None or s_exp is None or s_got is None \
            or w_got.dtype not in FP8_DTYPES or w_got.shape != w_exp.shape:
        return None
    try:
        diff = (dequantize(w_got.cpu(), s_got.cpu()) - dequantize(w_exp.cpu(), s_exp.cpu())).abs()
    except RuntimeError:  # a scale whose shape does not broadcast: the shape says it
        return None
    return float(diff.nan_to_num(float("inf")).max()) if diff.numel() else 0.0


def fp8_divergences(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                    weight: str) -> Divergence | None:
    """One divergence for `weight`'s codes, scale and input scale, or None if all equal.
    It leads with the scale and the dequantized error, the figures that say how wrong the
    matrix computes, before the raw code difference."""
    names = [weight, scale_name(weight), input_scale_name(weight)]
    problems = [d for n in names if n in expected
                for d in [compare_tensor(n, expected[n], found[n]) if n in found else
                          Divergence("absent", n, f"{n}: absent", finding="missing")]
                if d is not None]
    if not problems:
        return None
    slot = fused_slot(weight)
    matrix = weight[: -len(".weight")]
    named = f"{matrix}{' (' + slot.text() + ')' if slot else ''}"
    by_name = {d.subject: d for d in problems}
    codes, scale, inputs = (by_name.get(n) for n in names)
    want_s, got_s = expected.get(scale_name(weight)), found.get(scale_name(weight))
    scale_exp, scale_got = _scale_text(want_s), _scale_text(got_s)
    error = _dequantized_error(expected, found, weight)
    error_text = f"; dequantized weight off by up to {error:.4g}" if error is not None else ""
    if scale is not None and scale.finding == "unwritten":
        # before the codes: codes requantized with a poisoned scale are NaN as well
        finding = "unwritten"
        headline = (f"{named}: scale never written: it holds the poison pattern (or was "
                    f"computed from a slot that does), expected {scale_exp}")
    elif codes is not None and codes.finding in ("unwritten", "dtype", "shape", "missing", "meta"):
        finding, headline = codes.finding, f"{named}: codes {codes.headline.split(': ', 1)[-1]}"
    elif scale is not None and scale.finding in ("dtype", "shape", "missing", "meta"):
        finding, headline = "scale", f"{named}: scale {scale.headline.split(': ', 1)[-1]}"
    elif scale is not None:
        finding = "scale"
        headline = f"{named}: scale differs: expected {scale_exp}, found {scale_got}{error_text}"
    elif codes is not None:
        finding = "codes"
        headline = (f"{named}: {codes.counts.mismatched if codes.counts else '?'} FP8 codes "
                    f"differ under an equal scale ({scale_exp}){error_text}")
    else:
        finding = inputs.finding if inputs.finding in ("unwritten", "missing") else "input_scale"
        headline = f"{named}: input_scale {inputs.headline.split(': ', 1)[-1]}"
    lines = [headline, f"    weight_scale: expected {scale_exp}, found {scale_got}"
             if scale is not None else f"    weight_scale: {scale_exp} on both sides"]
    if codes is not None:
        lines.append("    codes: " + codes.message.split(": ", 1)[-1])
    if inputs is not None:
        lines.append("    input_scale: " + inputs.message.split(": ", 1)[-1])
    detail: dict = {"matrix": matrix, "slot": slot.text() if slot else "",
                    "expected_scale": scale_exp, "found_scale": scale_got}
    if error is not None:
        detail["dequantized_max_abs_diff"] = error
    kind = "fp8" if all(d.kind == "tensor" for d in problems) else problems[0].kind
    diffs = codes.diffs if codes is not None and codes.diffs else Diffs()
    diffs.dequantized_max_abs = error
    return Divergence(kind, weight, "\n".join(lines), detail, finding=finding,
                      headline=headline, tensor=weight, slot=slot,
                      dtype=codes.dtype if codes else None, shape=codes.shape if codes else None,
                      counts=codes.counts if codes else None, diffs=diffs,
                      rows=codes.rows if codes else None,
                      first_index=codes.first_index if codes else None,
                      expected=f"scale {scale_exp}", found=f"scale {scale_got}",
                      source=codes.source if codes else None, tp=codes.tp if codes else None,
                      map=codes.map if codes else None)


def refine_fp8(divergences: list[Divergence], expected: Mapping[str, torch.Tensor] | None,
               found: Mapping[str, torch.Tensor] | None, spec: ModelSpec) -> list[Divergence]:
    """Replace per-tensor divergences on quantized weights and their scales by one
    divergence per logical matrix (in model order). A weight is quantized when the
    reference holds it as FP8 codes or with a scale; a bfloat16 model's linear is not."""
    if expected is None or found is None:
        return divergences
    weights = [w for w in spec.quantized_weights()
               if scale_name(w) in expected or (w in expected and expected[w].dtype in FP8_DTYPES)]
    owned = {n: w for w in weights for n in (w, scale_name(w), input_scale_name(w))}
    hit = [w for w in weights if any(owned.get(d.subject) == w for d in divergences)]
    rest = [d for d in divergences if d.subject not in owned]
    return [d for w in hit for d in [fp8_divergences(expected, found, w)] if d] + rest


def zero_weight_divergences(found: Mapping[str, torch.Tensor], zero_weights: tuple[str, ...]
                            ) -> list[Divergence]:
    """P12: an all-zero weight must quantize to a finite scale and dequantize to exactly 0
    (whatever scale floor the loader declares)."""
    out = []
    for weight in zero_weights:
        codes, scale = found.get(weight), found.get(scale_name(weight))
        if codes is None or scale is None or codes.dtype not in FP8_DTYPES:
            continue
        problems = []
        if not bool(torch.isfinite(scale.float()).all()):
            problems.append(f"its scale is {_scale_text(scale)}, not finite")
        values = dequantize(codes.cpu(), scale.cpu())
        if not bool((values == 0).all()):
            bad = int((values != 0).sum())
            problems.append(f"{bad} of {values.numel()} elements dequantize to non-zero "
                            f"values (first {values.reshape(-1)[(values != 0).reshape(-1)][0].item()})")
        if problems:
            slot = slot_of(weight)
            out.append(Divergence("fp8", weight, f"{weight[:-len('.weight')]}"
                                  f"{' (' + slot + ')' if slot else ''}: an all-zero weight "
                                  f"must quantize to a finite scale and back to exactly 0, but "
                                  + "; ".join(problems), {"scale": _scale_text(scale)}))
    return out


def round_trip_divergences(weights: Mapping[str, torch.Tensor],
                           found: Mapping[str, torch.Tensor], spec: ModelSpec
                           ) -> list[Divergence]:
    """Each quantized weight of `found` dequantizes to within half a code step (at its own
    scale, saturation at 448 included) of the float `weights` it was quantized from."""
    out = []
    for name in spec.quantized_weights():
        codes, scale, w = found.get(name), found.get(scale_name(name)), weights.get(name)
        if codes is None or scale is None or w is None or codes.dtype not in FP8_DTYPES:
            continue
        w = w.detach().float().cpu()
        if not bool(w.abs().max() > 0) or codes.shape != w.shape:
            continue  # zero weights are P12's; shapes are the state comparison's
        s = scale.detach().float().cpu()
        s_rows = s.reshape(-1, 1) if s.dim() else s
        got = dequantize(codes.cpu(), s.cpu())
        bound = s_rows * code_step(codes.cpu()) / 2 + w.abs() * 2.0 ** -20
        error = (got - w).abs()
        bad = ~(error <= bound)
        if bool(bad.any()):
            first = [int(i) for i in bad.nonzero()[0]]
            slot = slot_of(name)
            out.append(Divergence("fp8", name, f"{name[:-len('.weight')]}"
                                  f"{' (' + slot + ')' if slot else ''}: {int(bad.sum())} of "
                                  f"{w.numel()} weights dequantize more than half a code step "
                                  f"away (scale {_scale_text(scale)}, weight amax "
                                  f"{float(w.abs().max()):.4g}); first at {first}: weight "
                                  f"{float(w[tuple(first)]):.6g}, dequantized "
                                  f"{float(got[tuple(first)]):.6g}",
                                  {"scale": _scale_text(scale), "first_index": first}))
    return out


def codes_within_one_step(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                          spec: ModelSpec) -> list[Divergence]:
    """For loaders declaring `fp8_cuda_codes: one_step`: each quantized weight's codes lie
    within one FP8 code step of the reference's. Those that do are replaced in `found` by
    the expected codes, so that everything else is still compared exactly."""
    out = []
    for name in spec.quantized_weights():
        want, got = expected.get(name), found.get(name)
        if want is None or got is None or got.dtype not in FP8_DTYPES or got.shape != want.shape:
            continue
        apart = (got.float() - want.float()).abs()
        if bool((apart > code_step(want)).any()) or bool(apart.isnan().any()):
            slot = slot_of(name)
            out.append(Divergence("fp8", name, f"{name[:-len('.weight')]}"
                                  f"{' (' + slot + ')' if slot else ''}: codes more than one "
                                  f"FP8 step from the reference's (max {float(apart.max()):.4g})"))
        else:
            found[name] = want
    return out


def code_agreement(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                   spec: ModelSpec) -> dict[str, float]:
    """How far the candidate's FP8 codes and scales are from the reference's, counted over
    every quantized weight both hold as FP8 of one shape: codes compared and differing (as
    bytes), the largest distance in code steps, scales compared and differing (as bits)."""
    figures = {"matrices": 0, "codes": 0, "codes_differing": 0, "max_steps_apart": 0.0,
               "scales": 0, "scales_differing": 0}
    for name in spec.quantized_weights():
        want, got = expected.get(name), found.get(name)
        if want is None or got is None or got.dtype not in FP8_DTYPES or got.shape != want.shape:
            continue
        want, got = want.cpu(), got.cpu()
        differ = want.view(torch.uint8) != got.view(torch.uint8)
        figures["matrices"] += 1
        figures["codes"] += want.numel()
        figures["codes_differing"] += int(differ.sum())
        if bool(differ.any()):
            apart = ((got.float() - want.float()).abs() / code_step(want))[differ]
            steps = float(apart.nan_to_num(float("inf")).max())
            figures["max_steps_apart"] = max(figures["max_steps_apart"], steps)
        want_s, got_s = expected.get(scale_name(name)), found.get(scale_name(name))
        if want_s is not None and got_s is not None and got_s.shape == want_s.shape:
            want_s, got_s = want_s.cpu().float(), got_s.cpu().float()
            figures["scales"] += want_s.numel()
            figures["scales_differing"] += int((want_s.view(torch.int32)
                                                != got_s.view(torch.int32)).sum())
    return figures


def fp8_matmul_tolerance(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Elementwise bound for `x @ w.T` computed by an FP8 kernel from exactly these
    (dequantized) operands: float32 accumulation of K products, each rounded once, plus
    the rounding of the output: 2·K·2⁻²⁴·(|x| @ |w|.T) + 2⁻²⁴·|x @ w.T| + 1e-30."""
    k = x.shape[-1]
    magnitude = x.abs().double() @ w.abs().double().T
    exact = (x.double() @ w.double().T).abs()
    return 2 * k * 2.0 ** -24 * magnitude + 2.0 ** -24 * exact + 1e-30


def _pad16(t: torch.Tensor) -> torch.Tensor:
    """_scaled_mm wants every dimension a multiple of 16: pad with zeros (exact)."""
    rows, cols = (-t.shape[0]) % 16, (-t.shape[1]) % 16
    return F.pad(t.float(), (0, cols, 0, rows)).to(t.dtype)


def scaled_mm_divergences(found: Mapping[str, torch.Tensor],
                          expected: Mapping[str, torch.Tensor], spec: ModelSpec, device: str,
                          tokens: int, one_step: bool = False,
                          figures: list[dict] | None = None) -> list[Divergence]:
    """Every per-tensor quantized linear of the candidate's `found` state through
    `torch._scaled_mm` on `device` (activations quantized per tensor) against the float64
    matmul with the *reference's* dequantized weight, within `fp8_matmul_tolerance` (plus
    one code step per weight where the loader declares `one_step`). `figures`, if given,
    receives each matmul's largest error and largest error / tolerance."""
    out = []
    for name in spec.quantized_weights():
        codes, scale = found.get(name), found.get(scale_name(name))
        if codes is None or scale is None or codes.dtype != FP8 or scale.dim():
            continue
        x = torch.randn(tokens, codes.shape[1], generator=torch.Generator().manual_seed(tokens))
        x_scale = (x.abs().amax() / FP8_MAX).clamp(min=1e-12)
        x_codes = (x / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        result = torch._scaled_mm(_pad16(x_codes).to(device), _pad16(codes.to(device)).t(),
                                  scale_a=x_scale.to(device), scale_b=scale.float().to(device),
                                  out_dtype=torch.float32)[:tokens, :codes.shape[0]].cpu()
        x_dq = dequantize(x_codes, x_scale)
        w_dq = dequantize(expected[name].cpu(), expected[scale_name(name)].cpu())
        bound = fp8_matmul_tolerance(x_dq, w_dq)
        if one_step:
            step = code_step(expected[name].cpu()) * expected[scale_name(name)].cpu().float()
            bound = bound + x_dq.abs().double() @ step.double().T
        error = (result.double() - x_dq.double() @ w_dq.double().T).abs()
        excess = error - bound
        if figures is not None:
            figures.append({"weight": name,
                            "max_abs_error": float(error.nan_to_num(float("inf")).max()),
                            "max_error_over_tolerance": float(
                                (error / bound).nan_to_num(float("inf")).max())})
        if bool((excess > 0).any()) or bool(result.isnan().any()):
            slot = slot_of(name)
            out.append(Divergence("fp8", name, f"{name[:-len('.weight')]}"
                                  f"{' (' + slot + ')' if slot else ''}: _scaled_mm on {device} "
                                  f"with the candidate's codes and scale "
                                  f"({_scale_text(scale)}) differs from the reference's "
                                  f"dequantized matmul (scale "
                                  f"{_scale_text(expected[scale_name(name)])}) beyond the FP8 "
                                  f"tolerance, by up to "
                                  f"{float(excess.nan_to_num(float('inf')).max()):.3g}"))
    return out


@register("fp8")
def _refine_per_tensor(divergences, expected, found, spec, options=None):
    if spec.quant is not None:  # another format's checkpoint (its `weight_scale` is not FP8's)
        return divergences
    return refine_fp8(divergences, expected, found, spec)
