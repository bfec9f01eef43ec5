"""Quality of the strategies: within a quarter of the `pr` budget (25 derandomized
examples), each property's case distribution reaches the corners its bugs live in."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings

from generators.cases import load_cases
from generators.checkpoints import CheckpointPlan
from generators.fp8 import online_cases, serialized_cases
from generators.tensors import tensors
from reference.contract import CAPABILITIES, ModelSpec
from reference.dtypes import dtype_class

ALL = frozenset(CAPABILITIES)
CORNER_BUDGET = 25  # examples; the pr profile runs 100
PR_BUDGET = 100  # issue 14's corners: reached within what a pr run draws


def reached(strategy, features, budget: int = CORNER_BUDGET) -> Counter:
    """Run `strategy` for `budget` examples, derandomized, and count the features it shows."""
    seen: Counter = Counter()

    @settings(max_examples=budget, derandomize=True, database=None, deadline=None)
    @given(strategy)
    def collect(case):
        for name, present in features(case).items():
            if present:
                seen[name] += 1

    collect()
    return seen


def _layout(case) -> dict[str, bool]:
    spec, plan, options = case.plan.spec, case.plan, case.options
    classes = {dtype_class(spec.parameter_dtype(e.canonical_name)) for e in spec.extras}
    return {
        "fused on disk (non-native)": plan.fused != spec.fused_on_disk_natively,
        "phi3 (native fused)": spec.family == "phi3",
        ">= 2 shards": plan.shards >= 2,
        "GQA": spec.num_heads > spec.num_kv_heads,
        "tied": spec.tie_word_embeddings, "untied": not spec.tie_word_embeddings,
        "tp 2": options.tp_size == 2, "tp 4": options.tp_size == 4,
        "tp > kv heads": options.tp_size > spec.num_kv_heads,
        "int extra": "int" in classes, "bool extra": "bool" in classes,
        "fp8 extra": "fp8" in classes, "bf16 params": spec.dtype == "bfloat16",
        "disk dtype != param dtype": plan.disk_dtype != (options.dtype or spec.dtype),
    }


def test_loading_cases_reach_every_layout_and_dtype_class():
    seen = reached(load_cases(ALL, tp=True, extras=True, dtype_override=True), _layout)
    expected = ["fused on disk (non-native)", "phi3 (native fused)", ">= 2 shards", "GQA", "tied",
                "untied", "tp 2", "tp 4", "tp > kv heads", "int extra", "bool extra",
                "fp8 extra", "bf16 params", "disk dtype != param dtype"]
    missing = [f for f in expected if not seen[f]]
    assert not missing, f"not reached within {CORNER_BUDGET} examples: {missing}; seen {dict(seen)}"


def test_loading_cases_reach_every_cast_with_its_own_ties():
    """float64 into the halves (rounds twice through float32 in torch), and float16 and
    bfloat16 into each other; the data holds those casts' ties (at_rounding_ties)."""
    def casts(case):
        pair = (case.plan.disk_dtype, case.options.dtype or case.plan.spec.dtype)
        return {"float64 into bf16/fp16": pair in (("float64", "bfloat16"), ("float64", "float16")),
                "float64 into float32": pair == ("float64", "float32"),
                "float16 into bf16": pair == ("float16", "bfloat16"),
                "bf16 into float16": pair == ("bfloat16", "float16")}
    # the casts property's cases (conformance/test_loading.py::test_float_casts_round_once)
    seen = reached(load_cases(ALL, extras=True, wrong_dtype=True, dtype_override=True,
                              casts=True), casts, PR_BUDGET)
    assert len(seen) == 4, f"not reached within {PR_BUDGET} examples; seen {dict(seen)}"


def test_tp_cases_reach_a_vocabulary_the_split_must_pad():
    seen = reached(load_cases(ALL, tp=True, extras=True, dtype_override=True), lambda c: {
        "V % tp != 0": c.plan.spec.vocab_size % c.options.tp_size != 0}, PR_BUDGET)
    assert seen["V % tp != 0"], seen


def test_tracking_cases_reach_a_single_missing_bias():
    def features(case):
        dropped = case.plan.dropped
        return {"single missing bias": len(dropped) == 1 and dropped[0].endswith(".bias"),
                "several dropped": len(dropped) > 1, "nothing dropped": not dropped}
    seen = reached(load_cases(ALL, drop=True, track=False, extras=True, meta=True), features)
    assert seen["single missing bias"] and seen["several dropped"] and seen["nothing dropped"], seen


def test_name_mapping_cases_reach_every_kind_of_near_miss():
    def features(case):
        keys = " ".join(e.key for e in case.plan.extra_keys)
        return {"doubled letter": ".q" in keys and "_proj" in keys or "qlm_head" in keys
                or ".qinput" in keys or ".qpost" in keys or ".qnorm" in keys or ".qembed" in keys,
                "zero-padded index": ".0" in keys.replace("0.", "", 0) and "layers.0" in keys,
                "suffix": "_scale" in keys, "prefix": "base_model." in keys}
    seen = reached(load_cases(ALL, near_miss=True), features)
    assert all(seen[f] for f in ("doubled letter", "suffix", "prefix")), seen


def test_tying_and_sharding_cases_reach_their_defects():
    tying = reached(load_cases(ALL, extra_keys=True, drop=True), lambda c: {
        "head in tied checkpoint": c.plan.head_in_tied and c.plan.spec.tie_word_embeddings,
        "untied head dropped": "lm_head.weight" in c.plan.dropped})
    assert tying["head in tied checkpoint"], tying
    sharding = reached(load_cases(ALL, stray=True, min_shards=2), lambda c: {
        "stray file": c.plan.stray_file and c.plan.shards > 1})
    assert sharding["stray file"], sharding


def test_checkpoint_corners_of_real_checkpoints_are_reached():
    """Issue 14: what save_pretrained and real shard sets hold, within the pr budget."""
    def tying(c):
        tied, extras = c.plan.spec.tie_word_embeddings, [e.key for e in c.plan.extra_keys]
        return {"tied head equal to the embedding": tied and c.plan.head_in_tied
                and c.plan.tied_head_equal,
                "tied head differing": tied and c.plan.head_in_tied and not c.plan.tied_head_equal,
                "lm_head.bias in a tied model": tied and "lm_head.bias" in extras,
                "lm_head.weight_scale in a tied model": tied and "lm_head.weight_scale" in extras}
    seen = reached(load_cases(ALL, extra_keys=True, drop=True), tying, PR_BUDGET)
    assert len(seen) == 4, seen

    def sharding(c):
        many = c.plan.shards > 1
        return {"> 2 shards": c.plan.shards > 2, "an empty shard": many and c.plan.empty_shard,
                "in a header, not in weight_map": many and bool(c.plan.unindexed),
                "in weight_map, in no header": many and bool(c.plan.phantom)}
    seen = reached(load_cases(ALL, stray=True, min_shards=2), sharding, PR_BUDGET)
    assert len(seen) == 4, seen

    def spans(c):
        deltas = [d for _, d in c.plan.span_deltas]
        return {"span larger than shape x itemsize": any(d > 0 for d in deltas),
                "span smaller": any(d < 0 for d in deltas),
                "span off by part of an element": any(abs(d) == 1 for d in deltas)}
    seen = reached(load_cases(ALL, wrong_shape=True, tp=True), spans, PR_BUDGET)
    assert len(seen) == 3, seen


def test_online_fp8_cases_reach_the_corners_of_per_row_scales():
    seen = reached(online_cases(ALL, tp=True), lambda c: {
        "zero row in a non-zero weight": bool(c.plan.zero_rows) and c.plan.weight_gain != 0,
        "amax in one element": bool(c.plan.amax_spikes)}, PR_BUDGET)
    assert len(seen) == 2, seen


def test_meta_cases_reach_meta_submodule_and_meta_init_in_low_precision():
    seen = reached(load_cases(ALL, meta=True, extras=True, dtype_override=True), lambda c: {
        "meta resampler in bf16/fp16": c.plan.spec.meta_submodule
        and (c.options.dtype or c.plan.spec.dtype) != "float32",
        "meta_init": c.options.meta_init})
    assert seen["meta resampler in bf16/fp16"] and seen["meta_init"], seen


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_tensors_reach_all_256_codes(dtype):
    codes: set[int] = set()

    @settings(max_examples=CORNER_BUDGET, derandomize=True, database=None, deadline=None)
    @given(tensors(dtype, (256,), finite=False))
    def collect(t):
        codes.update(t.view(torch.uint8).tolist())

    collect()
    assert len(codes) == 256, f"{256 - len(codes)} FP8 codes never drawn: " \
                              f"{sorted(set(range(256)) - codes)[:16]}"


@pytest.mark.parametrize("dtype", ["int8", "int32", "bool", "float16", "bfloat16"])
def test_tensors_strategy_keeps_dtype_and_shape(dtype):
    @settings(max_examples=10, derandomize=True, database=None, deadline=None)
    @given(tensors(dtype, (3, 2)))
    def check(t):
        assert t.dtype == getattr(torch, dtype) and t.shape == (3, 2)
        if t.dtype.is_floating_point:
            assert t.float().isfinite().all()

    check()


def test_byte_cases_reach_every_dtype_class():
    from generators.specs import any_dtype, extra_params

    def features(case):
        kinds = {e.dtype for e in case.plan.spec.extras}
        return {"fnuz or e8m0 fp8": any("fnuz" in k or "e8m0" in k for k in kinds),
                "sub-byte int": any(k.lstrip("u") in {f"int{i}" for i in range(1, 8)}
                                    for k in kinds),
                "fp4 pair": "float4_e2m1fn_x2" in kinds, "bool": "bool" in kinds,
                "wide uint": any(k in ("uint16", "uint32", "uint64") for k in kinds),
                "int32 (packed weights)": "int32" in kinds}
    seen = reached(load_cases(ALL, extras=True, tp=True, extra_strategy=extra_params(
        min_count=3, max_count=6, dtypes=any_dtype)), features)
    expected = ["fnuz or e8m0 fp8", "sub-byte int", "fp4 pair", "bool", "wide uint",
                "int32 (packed weights)"]
    missing = [f for f in expected if not seen[f]]
    assert not missing, f"not reached within {CORNER_BUDGET} examples: {missing}; {dict(seen)}"


def _fp8_serialized(case) -> dict[str, bool]:
    plan, spec = case.plan, case.plan.spec
    scales = dict(plan.fp8_scales)
    qkv = {scales[f"model.layers.0.self_attn.{p}.weight_scale"] for p in ("q_proj", "k_proj",
                                                                       "v_proj")}
    return {
        "fused on disk (one scale, every slot)": plan.fused,
        "split with distinct slot scales": not plan.fused and len(qkv) > 1,
        "scale <= 1e-5 (float16 underflow)": min(scales.values()) <= 1e-5,
        "scale >= 150 (float16 overflow)": max(scales.values()) >= 150,
        "input scales": spec.fp8_input_scale,
        "vLLM fp8 config": spec.fp8_checkpoint == "fp8",
        "compressed-tensors config": spec.fp8_checkpoint == "compressed-tensors",
        "scales stored as [1]": plan.scale_as_vector,
        "a zero weight": bool(plan.zero_weights),
        "tp 2+": case.options.tp_size > 1,
    }


def test_serialized_fp8_cases_reach_their_corners():
    seen = reached(serialized_cases(ALL, tp=True, zero=True), _fp8_serialized)
    missing = [
        f for f in ("fused on disk (one scale, every slot)", "split with distinct slot scales",
                    "scale <= 1e-5 (float16 underflow)", "scale >= 150 (float16 overflow)",
                    "input scales", "vLLM fp8 config", "compressed-tensors config",
                    "scales stored as [1]", "a zero weight", "tp 2+") if not seen[f]]
    assert not missing, f"not reached within {CORNER_BUDGET} examples: {missing}; seen {dict(seen)}"


def test_fp8_checkpoints_hold_every_finite_code():
    """All 254 finite e4m3fn codes appear in a large enough serialized weight."""
    spec = ModelSpec(hidden_size=32, intermediate_size=16, fp8_checkpoint="fp8")
    plan = CheckpointPlan(spec)
    codes = {int(b) for name, t in plan.canonical().items() if name in spec.quantized_weights()
             for b in t.view(torch.uint8).reshape(-1).tolist()}
    assert codes == set(range(256)) - {0x7F, 0xFF}


def test_online_fp8_cases_reach_their_corners():
    seen = reached(online_cases(ALL, tp=True, zero=True), lambda case: {
        "tiny weights (below the m512 floor)": case.plan.weight_gain <= 1e-3,
        "large weights": case.plan.weight_gain >= 300,
        "zero weight": bool(case.plan.zero_weights),
        "bf16 or fp16 model": case.plan.spec.dtype != "float32",
        "llama or qwen2 (units differ)": case.plan.spec.family != "phi3",
        "tp 2+": case.options.tp_size > 1})
    missing = [f for f in ("tiny weights (below the m512 floor)", "large weights", "zero weight",
                           "bf16 or fp16 model", "llama or qwen2 (units differ)", "tp 2+")
               if not seen[f]]
    assert not missing, f"not reached within {CORNER_BUDGET} examples: {missing}; seen {dict(seen)}"
