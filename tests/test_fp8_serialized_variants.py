"""The serialized-FP8 variants of issue 17 in the reference: `fp8_fused_scales:
w8a16_per_slot` (per slot only for a weight-only compressed-tensors checkpoint, as vLLM's
and SGLang's W8A16 scheme keeps it) and `fp8_scale_storage: weight` (a scale kept in the
weight's dtype, as compressed-tensors' initialize_qparams makes it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generators.checkpoints import CheckpointPlan
from reference.contract import LoadOptions, ModelSpec, check_loader
from reference.loading import ReferenceLoader

SCALES = {"q_proj": 0.01, "k_proj": 0.04, "v_proj": 0.0123}


def _load(tmp_path: Path, variants: dict, form: str, input_scale: bool, dtype="bfloat16"):
    spec = ModelSpec(fp8_checkpoint=form, fp8_input_scale=input_scale, dtype=dtype)
    table = {n: SCALES.get(n.split(".")[-2], 0.5) for n in spec.parameter_shapes()
             if n.endswith("_scale")}
    plan = CheckpointPlan(spec, fp8_scales=tuple(sorted(table.items())), scale_as_vector=True)
    directory = plan.write(tmp_path / f"{form}-{input_scale}-{dtype}")
    return ReferenceLoader(variants=variants).load(str(directory), spec, LoadOptions()).state


@pytest.mark.parametrize("form, input_scale, kept", [
    ("compressed-tensors", False, True),   # W8A16: each slot keeps its scale
    ("compressed-tensors", True, False),   # W8A8: requantized to the max
    ("fp8", False, False),
])
def test_w8a16_per_slot_keeps_slots_only_for_weight_only_compressed_tensors(
        tmp_path, form, input_scale, kept):
    state = _load(tmp_path, {"fp8_fused_scales": "w8a16_per_slot"}, form, input_scale,
                  dtype="float32")
    q_scale = float(state["model.layers.0.self_attn.q_proj.weight_scale"])
    assert q_scale == pytest.approx(0.01 if kept else 0.04)


def test_weight_storage_rounds_scales_to_the_weight_dtype(tmp_path):
    variants = {"fp8_fused_scales": "per_slot", "fp8_scale_storage": "weight"}
    state = _load(tmp_path, variants, "compressed-tensors", True)
    for leaf in ("weight_scale", "input_scale"):
        scale = state[f"model.layers.0.self_attn.v_proj.{leaf}"]
        assert scale.dtype == torch.float32
        assert float(scale) == float(torch.tensor(0.0123).to(torch.bfloat16)) != 0.0123
    plain = _load(tmp_path, {"fp8_fused_scales": "per_slot"}, "compressed-tensors", False,
                  dtype="float16")
    assert float(plain["model.layers.0.self_attn.v_proj.weight_scale"]) == \
        float(torch.tensor(0.0123))


def test_the_new_values_are_valid_declarations():
    loader = ReferenceLoader()
    loader.variants = {"fp8_fused_scales": "w8a16_per_slot", "fp8_scale_storage": "weight"}
    assert check_loader(loader) == []
    loader.variants = {"fp8_scale_storage": "bfloat16"}
    assert any("fp8_scale_storage" in problem for problem in check_loader(loader))


def test_the_vllm_fp8_config_is_drawn_only_for_loaders_that_read_it():
    from hypothesis import HealthCheck, given, settings

    from generators.fp8 import serialized_cases
    from reference.contract import CAPABILITIES
    for claimed, allowed in ((frozenset(CAPABILITIES) - {"fp8_vllm_config"},
                              {"compressed-tensors"}),
                             (frozenset(CAPABILITIES), {"compressed-tensors", "fp8"})):
        seen = set()

        @settings(max_examples=40, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=serialized_cases(claimed))
        def draw(case):
            seen.add(case.plan.spec.fp8_checkpoint)
        draw()
        assert seen == allowed
