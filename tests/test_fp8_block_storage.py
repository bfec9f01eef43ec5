"""The variant `fp8_block_storage` (reference/contract.py): a loader that holds a block-FP8
checkpoint dequantized (transformers on CPU) is expected to hold codes · weight_scale_inv
computed in float32 and rounded once to the model's dtype, and no scale grid; fused and
split in memory agree, partial edge blocks included."""

from __future__ import annotations

import pytest
import torch

from generators.checkpoints import CheckpointPlan
from reference.contract import VARIANTS, LoadOptions, ModelSpec, QuantSpec
from reference.loading import ReferenceLoader
from reference.quant.fp8_block import dequantize_blocks

# 3x4 blocks: q (8 rows) and gate (16 rows) end in a partial block row, so per-module
# storage must dequantize each part with its own grid rows.
SPEC = ModelSpec(family="llama", dtype="bfloat16", intermediate_size=16,
                 quant=QuantSpec("fp8_block", (3, 4)))
DEQUANTIZED = {"fp8_block_storage": "dequantized", "fp8_block_fusion": "per_module"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(CheckpointPlan(SPEC, data_seed=7).write(tmp_path_factory.mktemp("block")))


def test_the_variant_is_declared_with_codes_first():
    assert VARIANTS["fp8_block_storage"] == ("codes", "dequantized")


@pytest.mark.parametrize("fused", [True, False])
def test_dequantized_storage_is_codes_times_scale_rounded_once(checkpoint, fused):
    codes = ReferenceLoader(variants={"fp8_block_fusion": "per_module"}).load(
        checkpoint, SPEC, LoadOptions()).state
    held = ReferenceLoader(variants=DEQUANTIZED, fused_params=fused).load(
        checkpoint, SPEC, LoadOptions()).state
    assert not any(n.endswith("_scale_inv") for n in held)
    for weight in SPEC.quantized_weights():
        expected = dequantize_blocks(codes[weight], codes[weight + "_scale_inv"],
                                     SPEC.quant.block).to(torch.bfloat16)
        assert held[weight].dtype == torch.bfloat16
        assert torch.equal(held[weight], expected), weight
    assert torch.equal(held["model.norm.weight"], codes["model.norm.weight"])
