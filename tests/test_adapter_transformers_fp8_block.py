"""transformers' fine-grained FP8 adapter (conformance/adapters/transformers_fp8_block.py):
on CPU, `from_pretrained` dequantizes a block-FP8 checkpoint while loading (the contract's
variant `fp8_block_storage: dequantized`). These pin that the reference expresses it, and
the two findings of docs/findings/transformers-fp8-block.md, so that a transformers release
that fixes one shows up here. Skipped where transformers is not installed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from conformance.adapters import transformers_fp8_block as adapter  # noqa: E402
from conformance.compare import compare_outcomes  # noqa: E402
from reference.contract import ModelSpec, check_loader  # noqa: E402
from reference.quant.fp8_block import dequantize_blocks  # noqa: E402
from tests.block_fp8_cases import BLOCK_LLAMA, load_both  # noqa: E402

LLAMA = BLOCK_LLAMA


def _both(tmp_path: Path, spec: ModelSpec, **plan):
    return load_both(tmp_path, adapter.loader, spec, **plan)


def test_contract():
    assert check_loader(adapter.loader) == []
    assert "dequantize=True" in adapter.loader.version
    assert "fp8_block_online" not in adapter.loader.capabilities


@pytest.mark.parametrize("spec, fused", [
    (LLAMA, False),
    (replace(LLAMA, family="phi3", intermediate_size=32), True),  # one fused module, one grid
])
def test_dequantized_weights_equal_the_reference(tmp_path, spec, fused):
    """Whole blocks, non-quantized tensors already in the model's dtype on disk: transformers
    rounds codes * scale (float32) once to bfloat16, and keeps no scale."""
    expected, found = _both(tmp_path, spec, fused=fused, disk_dtype="bfloat16")
    assert compare_outcomes(expected, found, name_sets=("loaded", "missing", "unexpected"),
                            device="cpu") == []
    assert not any(n.endswith("_scale_inv") for n in found.result.state)


def test_known_unquantized_tensors_keep_their_disk_dtype(tmp_path):
    """Finding TB1: every checkpoint tensor goes through a converter carrying Fp8Dequantize,
    so HfQuantizer.get_new_dtype skips the cast to the model's dtype: a float32 norm stays
    float32 in a bfloat16 model."""
    expected, found = _both(tmp_path, LLAMA, disk_dtype="float32")
    assert expected.result.state["model.norm.weight"].dtype == torch.bfloat16
    assert found.result.state["model.norm.weight"].dtype == torch.float32


def test_known_block_size_is_read_from_the_grid_shape():
    """Finding TB2: Fp8Dequantize._dequantize_one takes the block as rows // grid_rows, not
    from weight_block_size: 12 rows in blocks of 5 (a grid of 3 rows, the last block
    partial) are dequantized as blocks of 4, silently."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    codes = torch.ones(12, 8).to(torch.float8_e4m3fn)
    scales = torch.tensor([[1.0], [2.0], [4.0]])
    expected = dequantize_blocks(codes, scales, (5, 8))
    found = Fp8Dequantize(None)._dequantize_one(codes, scales, torch.float32)
    assert expected[4, 0] == 1.0 and found[4, 0] == 2.0  # row 4 is in block row 0 of 5
