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
from reference.contract import (LoadOptions, ModelSpec, QuantSpec,  # noqa: E402
                                UnsupportedLayoutError, check_loader)
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


def test_a_tp_rank_that_is_not_whole_blocks_is_refused(tmp_path):
    """o_proj / down_proj under tp=2 hold 16 / 32 input columns: not multiples of block_k=12
    (validate_fp8_block_shape, mapped to UnsupportedLayoutError, as the reference)."""
    spec = replace(LLAMA, quant=QuantSpec("fp8_block", (4, 12)))
    expected, found = load_both(tmp_path, adapter.loader, spec, LoadOptions(tp_size=2))
    assert isinstance(expected.error, UnsupportedLayoutError)
    assert isinstance(found.error, UnsupportedLayoutError) and "block_k" in str(found.error)


def test_known_a_fused_shard_boundary_inside_a_block_is_not_refused(tmp_path):
    """Finding VB3: vLLM's _maybe_allow_fp8_block_shape_mismatch (linear.py) switches
    validate_fp8_block_shape off for a merged layer whose shards are not whole blocks; each
    shard's scale rows go to ceil(offset / block_n). Where those rows fit the fused grid the
    checkpoint loads silently (q 8 rows, k 4, v 4 in blocks of 3); where they overrun it
    (gate and up of 64 rows: 22 + 22 block rows of 43) a narrow fails, reported as a shape
    error. The reference refuses both layouts."""
    fits = ModelSpec(family="llama", vocab_size=8, hidden_size=8, intermediate_size=2,
                     num_layers=1, num_heads=4, num_kv_heads=2, head_dim=2, dtype="bfloat16",
                     quant=QuantSpec("fp8_block", (3, 4)))
    expected, found = _both(tmp_path / "fits", fits)
    assert isinstance(expected.error, UnsupportedLayoutError)
    assert found.error is None
    overruns = replace(LLAMA, quant=QuantSpec("fp8_block", (3, 8)))
    expected, found = _both(tmp_path / "overruns", overruns)
    assert isinstance(expected.error, UnsupportedLayoutError)
    assert "exceeds dimension size (43)" in str(found.error)
