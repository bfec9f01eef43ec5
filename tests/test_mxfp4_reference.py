"""The MXFP4 reference (reference/quant/mxfp4.py) on hand-made bytes: the E2M1 table and
nibble order, the E8M0 exponent, exact dequantization over the whole scale range, the
quantization rule (triton_kernels' ROUND_UP), partial groups, the TP rule on 32-element
boundaries, the checkpoint's config and shapes, and the clear errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from generators.checkpoints import CheckpointPlan, mxfp4_scale_bytes
from generators.mxfp4 import aligned_spec
from reference.contract import (LoadOptions, ModelSpec, QuantSpec, ShapeMismatchError,
                                UnsupportedLayoutError, parameter_table)
from reference.loading import ReferenceLoader
from reference.quant.mxfp4 import (E2M1_VALUES, SCALE_BYTES, dequantize_mxfp4, e8m0_to_float,
                                   pack_codes, quantize_mxfp4, scale_bytes_round_up,
                                   unpack_codes)
from reference.tp import gather_ranks, rank_shapes

SPEC = ModelSpec(quant=QuantSpec("mxfp4"))  # the default tiny spec: rows of 16 or 32 columns
WIDE = aligned_spec(SPEC, 2, 1)               # every row-parallel rank holds one whole group


def test_the_low_nibble_is_the_even_element_and_codes_are_e2m1():
    packed = torch.tensor([[0x21, 0xF8]], dtype=torch.uint8)  # codes 1, 2, 8, 15
    assert unpack_codes(packed).tolist() == [[1, 2, 8, 15]]
    assert torch.equal(pack_codes(unpack_codes(packed)), packed)
    values = dequantize_mxfp4(packed, torch.tensor([[127]], dtype=torch.uint8))
    assert values.tolist() == [[0.5, 1.0, -0.0, -6.0]] and values[0, 2].signbit()
    every = torch.arange(16, dtype=torch.uint8).reshape(1, 16)
    assert dequantize_mxfp4(pack_codes(every), torch.tensor([[127]], dtype=torch.uint8)
                            ).tolist() == [list(E2M1_VALUES)]


def test_the_scale_is_two_to_the_byte_minus_127_and_dequantization_is_exact():
    scales = torch.tensor(list(SCALE_BYTES), dtype=torch.uint8).reshape(-1, 1)
    assert torch.equal(e8m0_to_float(scales).double(),
                       torch.tensor([2.0 ** (b - 127) for b in SCALE_BYTES]).double().reshape(-1, 1))
    assert e8m0_to_float(torch.tensor([255], dtype=torch.uint8)).isnan().all()  # E8M0 NaN
    codes = torch.arange(16, dtype=torch.uint8).repeat(len(SCALE_BYTES), 2)  # 32 per row
    got = dequantize_mxfp4(pack_codes(codes), scales).double()
    want = torch.tensor(E2M1_VALUES, dtype=torch.float64)[codes.long()] * torch.tensor(
        [2.0 ** (b - 127) for b in SCALE_BYTES], dtype=torch.float64).reshape(-1, 1)
    assert torch.equal(got, want) and bool(torch.isfinite(got).all())
    assert got.abs()[got != 0].min() >= torch.finfo(torch.float32).tiny  # normal floats only


def test_a_partial_last_group_has_its_own_scale():
    codes = torch.full((1, 40), 2, dtype=torch.uint8)  # 1.0 everywhere: groups 0:32, 32:40
    values = dequantize_mxfp4(pack_codes(codes), torch.tensor([[127, 130]], dtype=torch.uint8))
    assert values.shape == (1, 40) and values[0, :32].eq(1).all() and values[0, 32:].eq(8).all()


def test_quantization_rounds_the_scale_up_and_codes_to_nearest_ties_away():
    weight = torch.zeros(2, 34)
    weight[0, :8] = torch.tensor([6.0, 1.25, -0.25, 5.0, 0.2, -0.0, 2.4, 3.5])
    weight[1, 0], weight[1, 33] = 12.0001, -0.75  # amax/6 just over 2: scale rounds up to 4
    packed, scales = quantize_mxfp4(weight)
    assert scales.tolist() == [[127, 0], [129, 124]]  # a zero group: byte 0, codes 0
    assert unpack_codes(packed)[0, :8].tolist() == [7, 3, 9, 7, 0, 8, 4, 6]
    assert scale_bytes_round_up(torch.tensor([6.0, 6.000001, 0.0])).tolist() == [127, 128, 0]
    back = dequantize_mxfp4(packed, scales)
    assert back[0, 1] == 1.5 and back[0, 3] == 6.0 and back[1, 0] == 12.0 and back[1, 33] == -0.75
    grid = torch.tensor(E2M1_VALUES[:8]) * 2.0 ** -3  # representable values round-trip exactly
    exact = torch.cat([grid, -grid]).reshape(1, 16)
    assert torch.equal(dequantize_mxfp4(*quantize_mxfp4(exact)), exact)
    with pytest.raises(ValueError, match="odd"):
        quantize_mxfp4(torch.ones(1, 3))


def test_checkpoint_config_shapes_dtypes_and_parameter_table():
    config = SPEC.to_hf_config()["quantization_config"]
    assert config["quant_method"] == "quark" and config["exclude"] == ["lm_head"]
    assert {k: config["global_quant_config"]["weight"][k] for k in
            ("dtype", "qscheme", "group_size", "scale_format")} == {
        "dtype": "fp4", "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0"}
    assert SPEC.quant.block == (1, 32) and ModelSpec.from_dict(SPEC.to_dict()) == SPEC
    shapes, h, i = SPEC.parameter_shapes(), SPEC.hidden_size, SPEC.intermediate_size
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (h, i // 2)
    assert shapes["model.layers.0.mlp.down_proj.weight_scale"] == (h, -(-i // 32))
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight_scale"):
        assert SPEC.parameter_dtype(name) == torch.uint8
    scale = parameter_table(SPEC)["model.layers.0.mlp.down_proj.weight_scale"]
    assert (scale.role, scale.tp_dim, scale.of) == ("block_scale", 1,
                                                    "model.layers.0.mlp.down_proj.weight")


def test_tp_slices_packed_columns_by_two_and_scale_columns_by_32():
    shapes = rank_shapes(WIDE, 2, 1)
    i = WIDE.intermediate_size
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (WIDE.hidden_size, i // 4)
    assert shapes["model.layers.0.mlp.down_proj.weight_scale"] == (WIDE.hidden_size, i // 64)
    assert shapes["model.layers.0.mlp.up_proj.weight_scale"] == (i // 2, WIDE.hidden_size // 32)


@pytest.mark.parametrize("fused", [False, True])
def test_split_fused_and_tp_loads_agree_and_forward_dequantizes(fused, tmp_path):
    directory = CheckpointPlan(spec=WIDE, fused=fused, data_seed=5).write(tmp_path / "c")
    loader = ReferenceLoader()
    result = loader.load(str(directory), WIDE, LoadOptions(poison=True))
    expected = CheckpointPlan(spec=WIDE, fused=fused, data_seed=5).canonical()
    assert all(torch.equal(result.state[n], expected[n]) for n in expected)
    split = ReferenceLoader(fused_params=False).load(str(directory), WIDE, LoadOptions()).state
    ranks = [loader.load(str(directory), WIDE, LoadOptions(tp_size=2, tp_rank=r)).state
             for r in range(2)]
    for other in (split, gather_ranks(WIDE, ranks)):
        assert all(torch.equal(result.state[n], other[n]) for n in result.state)
    assert loader.forward(result, torch.tensor([[1, 2]])).shape == (1, 2, WIDE.vocab_size)


def test_a_tp_split_inside_a_group_is_refused_naming_the_module_and_column(tmp_path):
    spec = replace(SPEC, intermediate_size=48)  # a down_proj rank would start at column 24
    directory = CheckpointPlan(spec=spec).write(tmp_path / "c")
    with pytest.raises(UnsupportedLayoutError, match=r"mlp.down_proj: rank 1 starts at input "
                                                     r"column 24 .*group of 32"):
        ReferenceLoader().load(str(directory), spec, LoadOptions(tp_size=2, tp_rank=0))
    assert ReferenceLoader().load(str(directory), spec, LoadOptions()).state  # tp=1 loads


def test_a_scale_of_the_wrong_shape_is_a_shape_error_naming_it(tmp_path):
    key = "model.layers.0.self_attn.o_proj.weight_scale"
    directory = CheckpointPlan(spec=SPEC, wrong_shape=(key,)).write(tmp_path / "c")
    with pytest.raises(ShapeMismatchError) as raised:
        ReferenceLoader().load(str(directory), SPEC, LoadOptions())
    assert raised.value.subject == key


def test_generated_scale_bytes_span_the_range_and_are_never_poison():
    scales = mxfp4_scale_bytes(torch.arange(256, dtype=torch.uint8).reshape(16, 16))
    assert int(scales.min()) == SCALE_BYTES.start and int(scales.max()) == SCALE_BYTES.stop - 1
    assert not bool((scales == 0xFF).any())
