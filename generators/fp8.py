"""FP8 cases: serialized per-tensor FP8 checkpoints and float checkpoints for online
quantization, built on the ordinary load cases (so every layout, shard count, TP rank and
option a candidate claims is still drawn).

Serialized checkpoints hold every finite e4m3fn code (all 256 bit patterns come first in
each large enough weight; the NaN codes only as the non-finite defect) and scales from
1e-6 (float16 dequantization underflows) to 1000 (it overflows at 448 * 146); a fused
group's slots share one scale when fused on disk, and share or differ when split. Online
checkpoints scale their linear weights from 1e-6 (below vLLM's scale floor) to 300.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from reference.contract import ModelSupport
from reference.fp8 import M512_FLOOR, quantization_groups
from reference.names import layout_keys
from .cases import LoadCase, load_cases

__all__ = ["SCALE_CORNERS", "WEIGHT_GAINS", "scale_values", "serialized_cases",
           "online_cases", "reload_cases", "scale_tables"]

SCALE_CORNERS = (1e-6, 2.5e-6, M512_FLOOR, 1e-3, 0.0123, 0.5, 1.0, 150.0, 200.0, 448.0, 1000.0)
WEIGHT_GAINS = (1.0, 1e-6, 1e-3, 300.0)


def scale_values() -> st.SearchStrategy[float]:
    """Positive scales: the corners first, then any float in [1e-6, 1e3]."""
    return st.one_of(st.sampled_from(SCALE_CORNERS), st.floats(1e-6, 1e3))


@st.composite
def scale_tables(draw, spec, *, fused_on_disk: bool, distinct_slots: bool | None = None
                 ) -> dict[str, float]:
    """canonical scale name -> value for every weight (and input) scale of `spec`. The slots
    of a fused group share one scale when fused on disk (one tensor, one scale); split, they
    share or differ (`distinct_slots` forces which)."""
    scales: dict[str, float] = {}
    for group in quantization_groups(spec, "fused"):
        shared = fused_on_disk or not (distinct_slots if distinct_slots is not None
                                       else draw(st.booleans(), label="distinct slots"))
        for suffix in ("weight_scale",) + (("input_scale",) if spec.fp8_input_scale else ()):
            value = draw(scale_values())
            for weight in group:
                name = weight[: -len("weight")] + suffix
                scales[name] = value if shared else draw(scale_values())
    return scales


@st.composite
def serialized_cases(draw, capabilities: frozenset[str], *, device: str = "cpu",
                     tp: bool = False, distinct_slots: bool | None = None,
                     zero: bool = False, nan_code: bool = False, drop_scale: bool = False,
                     poison: bool = True, support: ModelSupport = ModelSupport()) -> LoadCase:
    """A serialized FP8 checkpoint (compressed-tensors or vLLM `fp8` config, with or
    without input scales) and options within `capabilities`. `distinct_slots` forces the
    split-on-disk slots of a group to differ (True) or share a scale (False); `zero` may
    write one all-zero weight; `nan_code` writes one NaN code with check_finite on;
    `drop_scale` leaves one weight_scale out with tracking on."""
    base = draw(load_cases(capabilities, device=device, tp=tp, support=support,
                           track=True if drop_scale else None), label="base case")
    forms = ["compressed-tensors"] + (["fp8"] if "fp8_vllm_config" in capabilities else [])
    spec = replace(base.plan.spec, fp8_checkpoint=draw(st.sampled_from(forms),
                                                       label="fp8 config"),
        fp8_input_scale=draw(st.booleans(), label="input scales"))
    scales = draw(scale_tables(spec, fused_on_disk=base.plan.fused,
                               distinct_slots=distinct_slots), label="scales")
    weights = spec.quantized_weights()
    plan = replace(base.plan, spec=spec, fp8_scales=tuple(sorted(scales.items())),
                   # compressed-tensors always writes a per-tensor scale as [1]
                   # (initialize_qparams); vLLM's `fp8` form may hold () or [1]
                   scale_as_vector=spec.fp8_checkpoint == "compressed-tensors"
                   or draw(st.booleans(), label="scales as [1]"))
    if zero:
        plan = replace(plan, zero_weights=tuple(draw(st.lists(st.sampled_from(weights),
                                                              max_size=1))))
    if nan_code:
        plan = replace(plan, non_finite=((draw(st.sampled_from(weights)), float("nan")),))
    if drop_scale:
        plan = replace(plan, dropped=(draw(st.sampled_from(
            sorted(k for k in layout_keys(plan.spec, plan.fused) if k.endswith("weight_scale")))),))
    options = replace(base.options, check_finite=nan_code and "finite_check" in capabilities,
                      poison=poison and "poison" in capabilities)
    return LoadCase(plan, options)


@st.composite
def online_cases(draw, capabilities: frozenset[str], *, device: str = "cpu", tp: bool = False,
                 zero: bool = False, non_finite: bool = False,
                 support: ModelSupport = ModelSupport()) -> LoadCase:
    """A float checkpoint loaded with online FP8 quantization. The linear weights are
    multiplied by a drawn gain; `zero` may make one of them all zero; `non_finite` puts a
    NaN or Inf into one. Any of them may hold a zero row inside non-zero ones, or have
    its amax in one (negative) element: the corners of per-row scales."""
    base = draw(load_cases(capabilities, device=device, tp=tp, support=support),
                label="base case")
    weights = base.plan.spec.quantized_weights()
    plan = replace(base.plan, weight_gain=draw(st.sampled_from(WEIGHT_GAINS), label="gain"))
    if zero:
        plan = replace(plan, zero_weights=tuple(draw(st.lists(st.sampled_from(weights),
                                                              min_size=1, max_size=2,
                                                              unique=True))))
    if non_finite:
        plan = replace(plan, non_finite=((draw(st.sampled_from(weights)), draw(
            st.sampled_from([float("nan"), float("inf"), float("-inf")]))),))
    # drawn last, so the draws above stay those the mutant budgets were measured on
    plan = replace(plan, zero_rows=tuple(draw(st.lists(st.sampled_from(weights), max_size=2,
                                                       unique=True), label="zero rows")),
                   amax_spikes=tuple(draw(st.lists(st.sampled_from(weights), max_size=1),
                                          label="amax in one element")))
    return LoadCase(plan, replace(base.options, quantize="fp8"))


@st.composite
def reload_cases(draw, capabilities: frozenset[str], device: str,
                 support: ModelSupport = ModelSupport()) -> tuple[LoadCase, LoadCase]:
    """(A, B): two checkpoints of one spec and layout with different values, loaded with the
    same options: plain, online FP8 or serialized FP8 (as the candidate claims)."""
    modes = [m for m, cap in (("serialized", "fp8_serialized"), ("online", "fp8_online"))
             if cap in capabilities] + ["plain"]
    mode = draw(st.sampled_from(modes), label="mode")
    if mode == "serialized":
        first = draw(serialized_cases(capabilities, device=device, poison=False,
                                      support=support), label="A")
        other = tuple(sorted(draw(scale_tables(first.plan.spec, fused_on_disk=first.plan.fused),
                                  label="B scales").items()))
    elif mode == "online":
        first, other = draw(online_cases(capabilities, device=device, support=support),
                            label="A"), None
    else:
        first, other = draw(load_cases(capabilities, device=device, support=support),
                            label="A"), None
    options = replace(first.options, track=False, poison=False)
    seed = draw(st.integers(0, 2**16).filter(lambda s: s != first.plan.data_seed), label="B seed")
    second = replace(first.plan, data_seed=seed, **({"fp8_scales": other} if other else {}))
    return LoadCase(first.plan, options), LoadCase(second, options)
