"""The block FP8 reference (reference/quant/fp8_block.py) on hand-made matrices: scales per
block, partial edge blocks, zero blocks, the layout rules, the checkpoint's config and
shapes, and the clear errors."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from generators.checkpoints import CheckpointPlan
from reference.contract import (LoadOptions, ModelSpec, QuantSpec, ShapeMismatchError,
                                UnsupportedLayoutError)
from reference.fp8 import FP8_MAX, M512_FLOOR, Fp8Rules
from reference.loading import ReferenceLoader
from reference.quant import FORMATS
from reference.quant.fp8_block import (dequantize_blocks, grid_shape, layout_problems,
                                       online_block_scales, quantize_blocks)
from reference.tp import gather_ranks

SPEC = ModelSpec(quant=QuantSpec("fp8_block", (2, 4)), intermediate_size=16)


def test_each_block_has_its_own_scale_and_partial_edges_count_only_their_elements():
    weight = torch.zeros(5, 6)
    weight[0, 0], weight[4, 5], weight[2, 4] = 448.0, -7.0, 3.5  # blocks (0,0), (2,1), (1,1)
    scales = online_block_scales(weight, (2, 4), Fp8Rules())
    assert grid_shape(weight.shape, (2, 4)) == tuple(scales.shape) == (3, 2)
    assert scales[0, 0] == 1.0 and scales[2, 1] == torch.tensor(7.0) / FP8_MAX
    assert scales[1, 1] == torch.tensor(3.5) / FP8_MAX
    assert scales[0, 1] == M512_FLOOR  # a zero block: the floor, finite; its codes are 0
    codes = quantize_blocks(weight, scales, (2, 4), Fp8Rules())
    assert torch.equal(dequantize_blocks(codes, scales, (2, 4)), weight)


def test_a_zero_block_without_a_floor_is_not_finite():
    scales = online_block_scales(torch.zeros(2, 4), (2, 4), Fp8Rules(floor="none"))
    codes = quantize_blocks(torch.zeros(2, 4), scales, (2, 4), Fp8Rules(floor="none"))
    assert scales.item() == 0 and bool(codes.float().isnan().all())


def test_layout_rules_name_the_boundary_and_the_block():
    spec = ModelSpec(num_heads=2, head_dim=6, hidden_size=12, intermediate_size=12)
    (problem,) = [p for p in layout_problems(spec, (4, 4), 1, "fused") if "qkv" in p]
    assert "v_proj starts at row 18" in problem and "block row 4" in problem
    assert not layout_problems(spec, (4, 4), 1, "per_module")
    assert any("input columns" in p for p in layout_problems(spec, (2, 5), 2, "per_module"))


def test_checkpoint_config_and_shapes_are_the_real_loaders_form():
    config = SPEC.to_hf_config()["quantization_config"]
    assert config == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                      "weight_block_size": [2, 4]}
    shapes = SPEC.parameter_shapes()
    assert shapes["model.layers.0.self_attn.k_proj.weight_scale_inv"] == (4, 4)
    assert SPEC.parameter_dtype("model.layers.0.mlp.up_proj.weight_scale_inv") == torch.float32
    assert ModelSpec.from_dict(SPEC.to_dict()) == SPEC
    assert "quant" not in ModelSpec().to_dict()  # other specs serialize as before
    assert set(FORMATS) == {"fp8", "fp8_block", "mxfp4"}


@pytest.mark.parametrize("fused", [False, True])
def test_split_fused_and_tp_loads_agree(fused, tmp_path):
    directory = CheckpointPlan(spec=SPEC, fused=fused, data_seed=5).write(tmp_path / "c")
    whole = ReferenceLoader().load(str(directory), SPEC, LoadOptions(poison=True)).state
    split = ReferenceLoader(fused_params=False).load(str(directory), SPEC, LoadOptions()).state
    ranks = [ReferenceLoader().load(str(directory), SPEC, LoadOptions(tp_size=2, tp_rank=r)).state
             for r in range(2)]
    def bits(t):
        return t.view(torch.uint8) if t.dtype.itemsize == 1 else t
    for other in (split, gather_ranks(SPEC, ranks)):
        assert all(torch.equal(bits(whole[n]), bits(other[n])) for n in whole)


def test_a_scale_grid_of_the_wrong_shape_is_a_shape_error_naming_it(tmp_path):
    key = "model.layers.0.self_attn.q_proj.weight_scale_inv"
    directory = CheckpointPlan(spec=SPEC, wrong_shape=(key,)).write(tmp_path / "c")
    with pytest.raises(ShapeMismatchError) as raised:
        ReferenceLoader().load(str(directory), SPEC, LoadOptions())
    assert raised.value.subject == key and "[8, 4]" in str(raised.value)


def test_a_misaligned_fused_boundary_is_refused_only_where_fusion_is_declared(tmp_path):
    spec = replace(SPEC, quant=QuantSpec("fp8_block", (3, 4)))
    directory = CheckpointPlan(spec=spec).write(tmp_path / "c")
    with pytest.raises(UnsupportedLayoutError, match=r"qkv_proj: k_proj starts at row 16"):
        ReferenceLoader().load(str(directory), spec, LoadOptions())
    loaded = ReferenceLoader({"fp8_block_fusion": "per_module"}).load(
        str(directory), spec, LoadOptions())
    assert loaded.state["model.layers.0.self_attn.k_proj.weight_scale_inv"].shape == (3, 4)


def test_online_block_quantization_needs_its_block():
    with pytest.raises(ValueError, match="quant_block"):
        LoadOptions(quantize="fp8_block")
    with tempfile.TemporaryDirectory() as tmp:
        plain = replace(SPEC, quant=None)
        directory = CheckpointPlan(spec=plain).write(Path(tmp) / "c")
        result = ReferenceLoader().load(str(directory), plain,
                                        LoadOptions(quantize="fp8_block", quant_block=(2, 4)))
        logits = ReferenceLoader().forward(result, torch.tensor([[1, 2]]))
        assert bool(torch.isfinite(logits).all())
        assert result.state["model.layers.0.mlp.down_proj.weight_scale_inv"].shape == (8, 4)


def test_the_parameter_table_says_what_each_parameter_is():
    from reference.contract import ExtraParam, parameter_table
    spec = replace(SPEC, extras=(ExtraParam("mask", "bool", (2,), layer=0),))
    table = parameter_table(spec)
    assert set(table) == set(spec.parameter_shapes())
    k = table["model.layers.0.self_attn.k_proj.weight"]
    assert (k.role, k.layer, k.module, k.fused, k.slot, k.tp_dim) == (
        "linear_weight", 0, "self_attn.k_proj", "self_attn.qkv_proj", 1, 0)
    assert k.quant == ("model.layers.0.self_attn.k_proj.weight_scale_inv",)
    scale = table["model.layers.0.mlp.down_proj.weight_scale_inv"]
    assert (scale.role, scale.of, scale.tp_dim, scale.is_scale) == (
        "block_scale", "model.layers.0.mlp.down_proj.weight", 1, True)
    assert table["model.layers.0.extras.mask"].role == "extra"
    assert table["model.layers.0.input_layernorm.weight"].role == "norm"
    assert parameter_table(spec) is table  # computed once per spec
