"""The SGLang adapter (conformance/adapters/sglang.py): SGLang's own DefaultModelLoader on
generated checkpoints, returned in canonical form. Skipped where SGLang is not installed
(it needs the pinned env of requirements/sglang-cpu.txt: `tox -e sglang`).

These pin what the adapter does with SGLang, including its known differences
(docs/findings/sglang.md), so that a release changing them shows up here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("sglang")

from conformance.adapters import sglang as adapter  # noqa: E402
from conformance.compare import compare_outcomes, run_outcome  # noqa: E402
from generators.checkpoints import CheckpointPlan  # noqa: E402
from reference.contract import LoadOptions, ModelSpec, check_loader  # noqa: E402
from reference.loading import ReferenceLoader  # noqa: E402

REFERENCE = ReferenceLoader(variants=adapter.loader.variants)


def _both(tmp_path: Path, spec: ModelSpec, options: LoadOptions, **plan):
    directory = CheckpointPlan(spec, data_seed=3, **plan).write(tmp_path / "checkpoint")
    expected = run_outcome(lambda: REFERENCE.load(str(directory), spec, options))
    found = run_outcome(lambda: adapter.loader.load(str(directory), spec, options))
    return expected, found


def test_contract():
    assert check_loader(adapter.loader) == []
    assert adapter.make_loader().name == "sglang"
    assert "sglang 0." in adapter.loader.version


@pytest.mark.parametrize("spec, fused, options", [
    (ModelSpec(family="llama", num_layers=2, attention_bias=True), False, LoadOptions()),
    (ModelSpec(family="qwen2", attention_bias=True, tie_word_embeddings=True,
               dtype="bfloat16"), False, LoadOptions(poison=True)),
    (ModelSpec(family="phi3", num_heads=4, num_kv_heads=2, head_dim=4), True, LoadOptions()),
    (ModelSpec(family="llama"), True, LoadOptions()),  # fused q/k/v on disk for llama
])
def test_loads_like_the_reference(tmp_path, spec, fused, options):
    expected, found = _both(tmp_path, spec, options, fused=fused, shards=2)
    assert found.error is None, found.describe()
    assert compare_outcomes(expected, found, name_sets=(), device="cpu") == []


def test_simulated_tp_rank_reads_its_own_shards(tmp_path):
    """Every layer slice is this rank's; the vocabulary is padded to 64 before it is split
    (`vocab_shards=padded64`): with V=32 and tp=2 rank 0 holds all 32 real rows, rank 1
    none."""
    spec = ModelSpec(family="llama", num_heads=4, num_kv_heads=2, head_dim=4)
    for rank, rows in ((0, 32), (1, 0)):
        expected, found = _both(tmp_path / str(rank), spec, LoadOptions(tp_size=2, tp_rank=rank))
        assert found.result.state["model.embed_tokens.weight"].shape[0] == rows
        assert compare_outcomes(expected, found, name_sets=(), device="cpu") == []


def test_float32_checkpoint_is_loaded_in_float32_when_asked(tmp_path):
    """The adapter passes the config's dtype: SGLang's dtype="auto" would give float16
    for a float32 checkpoint (finding S1)."""
    spec = ModelSpec(family="llama")
    _, found = _both(tmp_path, spec, LoadOptions())
    assert found.result.state["model.embed_tokens.weight"].dtype == torch.float32


def test_online_fp8_matches_the_inverse_scale_op(tmp_path):
    """sglang-fp8 (online `quantization="fp8"`, input_to_float8): the fused q/k/v and
    gate/up quantized as one unit, codes and scales bit-identical to the reference under
    `fp8_scale_op=inverse`; the same load against `reciprocal` differs in the last bit of
    some codes or scales (the variant is real), and no KV-cache scale is in the state."""
    fp8 = adapter.fp8_loader
    assert check_loader(fp8) == [] and fp8.name == "sglang-fp8"
    spec = ModelSpec(family="llama", num_layers=2, dtype="bfloat16")
    options = LoadOptions(quantize="fp8", poison=True)
    directory = CheckpointPlan(spec, data_seed=3, fused=True).write(tmp_path / "checkpoint")
    found = run_outcome(lambda: fp8.load(str(directory), spec, options))
    assert found.error is None, found.describe()
    state = found.result.state
    assert state["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight_scale"],
                       state["model.layers.0.self_attn.v_proj.weight_scale"])
    assert not any(k.endswith(("k_scale", "v_scale")) for k in state)
    for scale_op, agrees in (("inverse", True), ("reciprocal", False)):
        reference = ReferenceLoader(variants={**fp8.variants, "fp8_scale_op": scale_op})
        expected = run_outcome(lambda: reference.load(str(directory), spec, options))
        divergences = compare_outcomes(expected, found, name_sets=(), device="cpu")
        assert (divergences == []) == agrees, (scale_op, divergences[:3])
