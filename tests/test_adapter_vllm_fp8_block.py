"""vLLM's block-wise FP8 adapter (conformance/adapters/vllm_fp8_block.py): Fp8Config with
`weight_block_size`, vLLM's own weights and shard loaders, its CPU block kernel
substituted. Skipped where vLLM is not installed (`tox -e vllm`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conformance.adapters import vllm_fp8_block as adapter  # noqa: E402
from conformance.compare import compare_outcomes  # noqa: E402
from reference.contract import (ModelSpec, QuantSpec, UnsupportedLayoutError,  # noqa: E402
                                check_loader)
from tests.block_fp8_cases import BLOCK_LLAMA, load_both  # noqa: E402

LLAMA = BLOCK_LLAMA


def _both(tmp_path: Path, spec: ModelSpec, **plan):
    return load_both(tmp_path, adapter.loader, spec, **plan)


def test_contract_and_named_substitution():
    assert check_loader(adapter.loader) == []
    assert "block ScaledMM kernels substituted" in adapter.loader.version
    assert adapter.loader.variants["fp8_block_fusion"] == "fused"


@pytest.mark.parametrize("spec, fused", [
    (LLAMA, False),
    (replace(LLAMA, family="phi3", intermediate_size=32), True),
])
def test_codes_and_scale_grids_equal_the_reference(tmp_path, spec, fused):
    expected, found = _both(tmp_path, spec, fused=fused, disk_dtype="bfloat16")
    assert compare_outcomes(expected, found, name_sets=("loaded", "missing"), device="cpu") == []
    assert "model.layers.0.self_attn.k_proj.weight_scale_inv" in found.result.state


def test_a_shard_boundary_inside_a_block_is_refused(tmp_path):
    """q has 32 rows: in blocks of 3 rows, k would start inside block row 10 of qkv_proj
    (validate_fp8_block_shape: 'is not divisible by weight quantization block_n')."""
    expected, found = _both(tmp_path, replace(LLAMA, quant=QuantSpec("fp8_block", (3, 8))))
    assert isinstance(expected.error, UnsupportedLayoutError)
    assert found.error is not None and "block_n" in str(found.error)
