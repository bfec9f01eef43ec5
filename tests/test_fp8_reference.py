"""The reference's FP8 rules (reference/fp8.py, semantics section 4) and the suite's FP8
comparisons, on hand-picked values where the right answer is known."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conformance.fp8_compare import (codes_within_one_step, scaled_mm_divergences,
                                     zero_weight_divergences)
from generators.checkpoints import CheckpointPlan
from reference.contract import LoadOptions, ModelSpec, NonFiniteInputError, UnsupportedLayoutError
from reference.fp8 import (AMAX_EPS, FP8, FP8_MAX, M512_FLOOR, Fp8Rules, dequantize,
                           export_fp8_checkpoint, online_inverse, online_scale, quantize_groups,
                           quantize_with_scale, requantize_to_max)
from reference.loading import ReferenceLoader
from reference.names import layout_keys

ALL_FINITE_CODES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8)
ALL_FINITE_CODES = ALL_FINITE_CODES[ALL_FINITE_CODES.float().isfinite()]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype.itemsize == 1 else t.view(torch.int32) \
        if t.dtype == torch.float32 else t


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)


def test_codes_saturate_and_round_to_nearest_even():
    rules = Fp8Rules()
    values = torch.tensor([1000.0, -1000.0, 448.0, 1.0625, 1.1875, 0.0])
    codes = quantize_with_scale(values, torch.tensor(1.0), rules).float()
    # 1.0625 lies halfway between 1.0 and 1.125: even mantissa (1.0); 1.1875 -> 1.25
    assert codes.tolist() == [448.0, -448.0, 448.0, 1.0, 1.25, 0.0]


def test_divide_and_reciprocal_are_different_variants():
    """W / s and W * (1/s) round differently for some values: the variant is real."""
    # values a few float32 ulps around s * (each rounding midpoint of the FP8 grid)
    scale = torch.tensor(3.0 / FP8_MAX)
    grid = ALL_FINITE_CODES.float().unique()
    midpoints = (grid[1:] + grid[:-1]) / 2
    centre = midpoints * scale
    weights = torch.cat([centre + k * torch.finfo(torch.float32).eps * centre.abs()
                         for k in range(-3, 4)])
    divide = quantize_with_scale(weights, scale, Fp8Rules(scale_op="divide"))
    reciprocal = quantize_with_scale(weights, scale, Fp8Rules(scale_op="reciprocal"))
    assert not torch.equal(bits(divide), bits(reciprocal))


def test_inverse_scale_op_multiplies_by_m_over_amax():
    """`inverse` (SGLang's input_to_float8): codes W * (M / amax), scale (M / amax)^-1,
    written out here from its definition; with an amax where 1 / (M / amax) differs from
    amax / M and its reciprocal from M / amax (last bits), the scale differs from the
    other ops' and the codes from `reciprocal`'s at that scale somewhere. A zero unit gets amax 1e-12, codes 0."""
    rules = Fp8Rules(scale_op="inverse", floor="eps")
    amaxes = torch.linspace(0.5, 3.0, 4001)
    inverse_scales = (FP8_MAX / amaxes).reciprocal()
    differs = (inverse_scales != amaxes / FP8_MAX) & (inverse_scales.reciprocal() != FP8_MAX / amaxes)
    amax = amaxes[differs.nonzero()[0, 0]]
    grid = ALL_FINITE_CODES.float().unique()
    weights = torch.cat([((grid[1:] + grid[:-1]) / 2) * (amax / FP8_MAX), amax.reshape(1)])
    weights = torch.cat([weights + k * torch.finfo(torch.float32).eps * weights.abs()
                         for k in range(-3, 4)]).clamp(-amax, amax)
    scale = online_scale(weights, rules)
    assert bits(scale) == bits((FP8_MAX / amax).reciprocal())
    assert bits(scale) != bits(online_scale(weights, Fp8Rules(floor="eps")))
    expected = (weights * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    codes = quantize_with_scale(weights, scale, rules, online_inverse(weights, rules))
    assert torch.equal(bits(codes), bits(expected))
    assert not torch.equal(bits(codes), bits(quantize_with_scale(
        weights, scale, Fp8Rules(scale_op="reciprocal"))))
    zeros = torch.zeros(3, 3)
    assert float(online_scale(zeros, rules)) == pytest.approx(AMAX_EPS / FP8_MAX, rel=1e-6)
    assert (quantize_with_scale(zeros, online_scale(zeros, rules), rules,
                                online_inverse(zeros, rules)).float() == 0).all()


@pytest.mark.parametrize("floor, scale", [("m512", M512_FLOOR), ("eps", AMAX_EPS / FP8_MAX),
                                          ("none", 0.0)])
def test_zero_tensor_scale_floors(floor, scale):
    rules = Fp8Rules(floor=floor)
    zeros = torch.zeros(4, 4)
    s = online_scale(zeros, rules)
    assert float(s) == pytest.approx(scale, rel=1e-6)
    codes = quantize_with_scale(zeros, s, rules)
    if floor == "none":  # vLLM's CUDA kernel: 0 / 0, what the P12 property reports
        assert codes.float().isnan().all()
        assert zero_weight_divergences({"w.weight": codes, "w.weight_scale": s}, ("w.weight",))
    else:
        assert (dequantize(codes, s) == 0).all()
        assert not zero_weight_divergences({"w.weight": codes, "w.weight_scale": s},
                                           ("w.weight",))


def test_per_row_scales_have_one_value_per_row():
    weights = torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]])
    s = online_scale(weights, Fp8Rules(unit="row"))
    assert s.shape == (3,) and s[0] == 2.0 / FP8_MAX and s[2] == M512_FLOOR
    codes = quantize_with_scale(weights, s, Fp8Rules(unit="row"))
    assert codes[0].float().abs().max() == FP8_MAX and codes[1].float().abs().max() == FP8_MAX


def test_non_finite_weights_are_refused_naming_the_tensor():
    spec = ModelSpec()
    weights = {n: torch.ones(4, 4) for n in spec.quantized_weights()}
    name = spec.quantized_weights()[2]
    weights[name][1, 2] = float("inf")
    with pytest.raises(NonFiniteInputError, match=name.replace(".", r"\.") + r".*\[1, 2\]"):
        quantize_groups(weights, spec, Fp8Rules())


@pytest.mark.parametrize("scale", [1e-6, 0.0123, 1.0, 200.0, 448.0])
def test_requantizing_at_the_same_scale_is_exact_in_float32(scale):
    """Every finite code survives dequantize -> requantize at its own scale in float32, so
    a fused-on-disk checkpoint (one scale in every slot) is unchanged by max-requant."""
    s = torch.tensor(scale)
    codes = {"a": ALL_FINITE_CODES.reshape(-1, 1)}
    new = requantize_to_max(codes, {"a": s}, ("a",), Fp8Rules())
    assert torch.equal(bits(new["a"][0]), bits(codes["a"]))


def test_float16_dequantization_moves_codes_at_tiny_and_large_scales():
    """vLLM's float16 dequantization underflows (tiny scales) and overflows (large ones):
    the variant differs from float32 exactly there."""
    codes = {"a": ALL_FINITE_CODES.reshape(-1, 1), "b": ALL_FINITE_CODES.reshape(-1, 1)}
    for low, high in ((1e-6, 2e-6), (200.0, 300.0)):
        scales = {"a": torch.tensor(low), "b": torch.tensor(high)}
        fp32 = requantize_to_max(codes, scales, ("a", "b"), Fp8Rules(dequant="float32"))
        fp16 = requantize_to_max(codes, scales, ("a", "b"), Fp8Rules(dequant="float16"))
        assert not torch.equal(bits(fp32["a"][0]), bits(fp16["a"][0])) or \
            not torch.equal(bits(fp32["b"][0]), bits(fp16["b"][0]))
        assert float(fp32["a"][1]) == float(fp16["a"][1]) == pytest.approx(high)


def _serialized_plan(fused: bool, scales: dict[str, float], **kw) -> CheckpointPlan:
    spec = ModelSpec(num_layers=2, fp8_checkpoint="compressed-tensors", fp8_input_scale=True)
    table = {n: scales.get(n.split(".")[-2], 0.5) for n in spec.parameter_shapes()
             if n.endswith("_scale")}
    return CheckpointPlan(spec, fused=fused, fp8_scales=tuple(sorted(table.items())), **kw)


def test_fused_on_disk_scale_fills_every_slot(tmp_path: Path):
    """Seed 003: one scale per fused matrix on disk = the same scale in each slot split."""
    shared = {"q_proj": 0.02, "k_proj": 0.02, "v_proj": 0.02, "gate_proj": 3.0, "up_proj": 3.0}
    for fused_params in (True, False):
        loader = ReferenceLoader(fused_params=fused_params)
        options = LoadOptions(poison=True)
        results = []
        for fused in (True, False):
            plan = _serialized_plan(fused, shared, scale_as_vector=fused)
            directory = plan.write(tmp_path / f"{fused_params}-{fused}")
            results.append(loader.load(str(directory), plan.spec, options).state)
        assert same(*results)
        assert float(results[0]["model.layers.1.self_attn.v_proj.weight_scale"]) == \
            pytest.approx(0.02)


def test_split_slots_are_requantized_to_their_max(tmp_path: Path):
    scales = {"q_proj": 0.01, "k_proj": 0.04, "v_proj": 0.02}
    plan = _serialized_plan(False, scales)
    directory = plan.write(tmp_path / "split")
    state = ReferenceLoader().load(str(directory), plan.spec, LoadOptions()).state
    raw = plan.canonical()
    for part in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{part}.weight"
        assert float(state[name + "_scale"]) == pytest.approx(0.04)
        want = dequantize(raw[name], raw[name + "_scale"])
        got = dequantize(state[name], state[name + "_scale"])
        assert (got - want).abs().max() <= 0.04 * 16  # within half a code step at 448
    kept = ReferenceLoader(variants={"fp8_fused_scales": "per_slot"}).load(
        str(directory), plan.spec, LoadOptions()).state
    assert float(kept["model.layers.0.self_attn.q_proj.weight_scale"]) == pytest.approx(0.01)


def test_nan_code_is_refused_with_check_finite(tmp_path: Path):
    name = "model.layers.1.mlp.up_proj.weight"
    plan = _serialized_plan(False, {}, non_finite=((name, float("nan")),))
    directory = plan.write(tmp_path / "nan")
    with pytest.raises(NonFiniteInputError, match="up_proj"):
        ReferenceLoader().load(str(directory), plan.spec, LoadOptions(check_finite=True))


@pytest.mark.parametrize("unit, fused_scales", [("fused", "max_requant"), ("tensor", "per_slot")])
def test_offline_export_loads_like_online(tmp_path: Path, unit: str, fused_scales: str):
    """P4 in the reference itself: quantize-on-load ≡ export, then load (float32 requant),
    for vLLM's combination and HF's (per-module scales, kept per module)."""
    spec = ModelSpec(num_layers=2, attention_bias=True, dtype="bfloat16")
    directory = CheckpointPlan(spec, weight_gain=1e-3).write(tmp_path / "float")
    loader = ReferenceLoader(variants={"fp8_unit": unit, "fp8_fused_scales": fused_scales})
    online = loader.load(str(directory), spec, LoadOptions(quantize="fp8"))
    exported = export_fp8_checkpoint(tmp_path / "export", spec, online.state)
    offline = loader.load(str(tmp_path / "export"), exported, LoadOptions())
    assert same(dict(online.state), dict(offline.state))
    after = loader.quantize(loader.load(str(directory), spec, LoadOptions()))
    assert same(dict(online.state), dict(after.state))
    with pytest.raises(UnsupportedLayoutError):
        loader.quantize(after)


def test_units_group_as_declared(tmp_path: Path):
    spec = ModelSpec(num_layers=1)
    directory = CheckpointPlan(spec).write(tmp_path / "c")
    scales = {}
    for unit in ("fused", "tensor", "row"):
        state = ReferenceLoader(variants={"fp8_unit": unit}).load(
            str(directory), spec, LoadOptions(quantize="fp8")).state
        scales[unit] = [state[f"model.layers.0.self_attn.{p}.weight_scale"]
                        for p in ("q_proj", "k_proj", "v_proj")]
    assert scales["fused"][0] == scales["fused"][1] == scales["fused"][2]
    assert len({float(s) for s in scales["tensor"]}) == 3
    assert scales["row"][0].shape == (spec.q_size,)


@pytest.mark.parametrize("quantize", [None, "fp8"])
def test_reload_is_in_place_and_touches_only_what_it_covers(tmp_path: Path, quantize):
    spec = ModelSpec(num_layers=2, attention_bias=True)
    options = LoadOptions(quantize=quantize)
    a = CheckpointPlan(spec, data_seed=1).write(tmp_path / "a")
    b_plan = CheckpointPlan(spec, data_seed=2)
    b = b_plan.write(tmp_path / "b")
    only_1 = replace(b_plan, dropped=tuple(k for k in layout_keys(spec, False)
                                           if not k.startswith("model.layers.1.")))
    b1 = only_1.write(tmp_path / "b1")
    loader = ReferenceLoader()
    live = loader.load(str(a), spec, options)
    before = {n: t.clone() for n, t in live.state.items()}
    pointers = {n: t.data_ptr() for n, t in live.state.items()}
    partial = loader.reload(live, str(b1), spec, options)
    fresh_b = loader.load(str(b), spec, options).state
    for name, tensor in partial.state.items():
        assert tensor.data_ptr() == pointers[name], name
        source = fresh_b if name.startswith("model.layers.1.") else before
        assert torch.equal(bits(tensor), bits(source[name])), name
    full = loader.reload(partial, str(b), spec, options)
    assert same(dict(full.state), dict(fresh_b))
    assert same(dict(loader.reload(full, str(b), spec, options).state), dict(fresh_b))


def test_reload_of_a_bad_checkpoint_changes_nothing(tmp_path: Path):
    spec = ModelSpec(num_layers=1)
    options = LoadOptions(quantize="fp8")
    a = CheckpointPlan(spec, data_seed=1).write(tmp_path / "a")
    name = spec.quantized_weights()[-1]
    bad = CheckpointPlan(spec, data_seed=2, non_finite=((name, float("nan")),)).write(
        tmp_path / "bad")
    loader = ReferenceLoader()
    live = loader.load(str(a), spec, options)
    before = {n: t.clone() for n, t in live.state.items()}
    with pytest.raises(NonFiniteInputError, match="down_proj"):
        loader.reload(live, str(bad), spec, options)
    assert same(dict(live.model.canonical_views()), before)


def test_scaled_mm_check_catches_a_wrong_scale_on_cpu(tmp_path: Path):
    """The CUDA matmul check, run on CPU's _scaled_mm: a scale 1% off is reported, one FP8
    step of declared tolerance absorbs it, a correct state passes."""
    spec = ModelSpec(num_layers=1)
    directory = CheckpointPlan(spec).write(tmp_path / "c")
    state = dict(ReferenceLoader().load(str(directory), spec, LoadOptions(quantize="fp8")).state)
    assert not scaled_mm_divergences(state, state, spec, "cpu", 3)
    name = "model.layers.0.mlp.up_proj.weight"
    wrong = {**state, name + "_scale": state[name + "_scale"] * 1.01}
    (divergence,) = scaled_mm_divergences(wrong, state, spec, "cpu", 3)
    assert "up_proj" in divergence.message and "slot 1" in divergence.message
    assert not scaled_mm_divergences(wrong, state, spec, "cpu", 3, one_step=True)


def test_one_code_step_tolerance():
    spec = ModelSpec(num_layers=1)
    name = spec.quantized_weights()[0]
    codes = ALL_FINITE_CODES[ALL_FINITE_CODES.float().abs() < 400]
    up_one = (codes.view(torch.uint8).to(torch.int32) + 1).to(torch.uint8).view(FP8)
    ok = up_one.float().isfinite() & (codes.float() > 0)
    expected = {name: codes[ok]}
    found = {name: up_one[ok]}
    assert not codes_within_one_step(expected, found, spec)
    two = (codes[ok].view(torch.uint8).to(torch.int32) + 2).to(torch.uint8).view(FP8)
    assert codes_within_one_step(expected, {name: two}, spec)
