"""The transformers adapter (conformance/adapters/transformers.py): it is a valid Loader,
and loads fixed small checkpoints through `AutoModelForCausalLM.from_pretrained` into
exactly the reference's canonical state, with transformers' loading report mapped onto
the name sets. Skipped where transformers is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from conformance.adapters import transformers as adapter  # noqa: E402
from generators.checkpoints import CheckpointPlan  # noqa: E402
from reference.contract import (LoadOptions, MissingWeightsError, ModelSpec,  # noqa: E402
                                ShapeMismatchError, UnexpectedKeysError, check_loader)
from reference.loading import ReferenceLoader  # noqa: E402

SPECS = {
    "llama": ModelSpec(family="llama", num_layers=2, attention_bias=True, mlp_bias=True),
    "qwen2": ModelSpec(family="qwen2", attention_bias=True, tie_word_embeddings=True,
                       dtype="bfloat16"),
    "phi3": ModelSpec(family="phi3", num_heads=4, num_kv_heads=2, head_dim=4),
}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN codes included)."""
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def _both(tmp_path: Path, plan: CheckpointPlan, options: LoadOptions = LoadOptions()):
    directory = plan.write(tmp_path / "ckpt")
    return (ReferenceLoader().load(str(directory), plan.spec, options),
            adapter.loader.load(str(directory), plan.spec, options))


def test_is_a_valid_loader():
    assert check_loader(adapter.loader) == []
    assert check_loader(adapter.make_loader()) == []


@pytest.mark.parametrize("family", sorted(SPECS))
def test_loads_like_the_reference(tmp_path, family):
    spec = SPECS[family]
    plan = CheckpointPlan(spec, fused=spec.fused_on_disk_natively, shards=2, data_seed=3)
    want, got = _both(tmp_path, plan)
    assert sorted(got.state) == sorted(want.state)
    for name, tensor in want.state.items():
        assert got.state[name].dtype == tensor.dtype, name
        assert _same_bits(got.state[name], tensor), name
    assert got.missing == want.missing == frozenset()
    assert got.unexpected == frozenset()
    assert dict(got.aliases) == dict(want.aliases)
    assert torch.equal(got.buffers["model.rotary_emb.inv_freq"],
                       want.buffers["model.rotary_emb.inv_freq"])
    # The reference computes in float32 from the loaded weights; transformers computes in
    # the model's dtype, so a half-precision model is compared upcast (same weights, same
    # math: equal within float32 rounding).
    ids = torch.tensor([[0, 3, 1, 2]])
    want_logits = ReferenceLoader().forward(want, ids).float()
    got.model.float()
    torch.testing.assert_close(adapter.loader.forward(got, ids).float(), want_logits,
                               rtol=1e-4, atol=1e-4)


def test_phi3_fused_modules_are_returned_as_row_views(tmp_path):
    spec = SPECS["phi3"]
    _, got = _both(tmp_path, CheckpointPlan(spec, fused=True))
    qkv = got.model.model.layers[0].self_attn.qkv_proj.weight
    assert got.state["model.layers.0.self_attn.k_proj.weight"].data_ptr() == \
        qkv.data_ptr() + spec.q_size * spec.hidden_size * qkv.element_size()


def test_missing_and_unexpected_come_from_the_loading_report(tmp_path):
    spec = SPECS["llama"]
    plan = CheckpointPlan(spec, dropped=("model.layers.1.mlp.down_proj.bias",))
    want, got = _both(tmp_path, plan)
    assert got.missing == want.missing == {"model.layers.1.mlp.down_proj.bias"}
    with pytest.raises(MissingWeightsError):
        adapter.loader.load(str(tmp_path / "ckpt"), spec, LoadOptions(track=True))


def test_unexpected_key_raises_only_under_strict(tmp_path):
    from generators.checkpoints import ExtraKey
    spec = SPECS["llama"]
    plan = CheckpointPlan(spec, extra_keys=(ExtraKey("model.unused_buffer", "int32", (4,)),))
    _, got = _both(tmp_path, plan)
    assert got.unexpected == {"model.unused_buffer"}
    with pytest.raises(UnexpectedKeysError):
        adapter.loader.load(str(tmp_path / "ckpt"), spec, LoadOptions(strict=True))


def test_shape_mismatch_is_mapped(tmp_path):
    spec = SPECS["llama"]
    directory = CheckpointPlan(spec, wrong_shape=("model.layers.0.self_attn.q_proj.weight",)
                               ).write(tmp_path / "ckpt")
    with pytest.raises(ShapeMismatchError):
        adapter.loader.load(str(directory), spec, LoadOptions())


def test_a_differing_checkpoint_head_unties_a_tied_model(tmp_path):
    """transformers 5's documented behaviour (the `tied_checkpoint_head` divergence)."""
    spec = SPECS["qwen2"]
    _, got = _both(tmp_path, CheckpointPlan(spec, head_in_tied=True, extra_keys=()))
    assert got.aliases == {}
    assert "lm_head.weight" in got.state
