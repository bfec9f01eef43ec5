"""The accelerate adapter (conformance/adapters/accelerate.py): it is a valid Loader, and
loads fixed small checkpoints through `init_empty_weights` + `load_checkpoint_in_model`
into exactly the reference's canonical state (extras of int / bool / FP8 dtypes too), with
accelerate's own byte accounting. Skipped where transformers or accelerate is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from conformance.adapters import accelerate as adapter  # noqa: E402
from generators.checkpoints import CheckpointPlan, ExtraKey  # noqa: E402
from reference.contract import (ExtraParam, LoadOptions, ModelSpec,  # noqa: E402
                                ShapeMismatchError, UnexpectedKeysError, check_loader)
from reference.loading import ReferenceLoader  # noqa: E402

SPECS = {
    "llama": ModelSpec(family="llama", num_layers=2, attention_bias=True, mlp_bias=True,
                       extras=(ExtraParam("packed", "int32", (2, 3)),
                               ExtraParam("mask", "uint8", (4,), layer=1),
                               ExtraParam("codes", "float8_e4m3fn", (16, 16)))),
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
    plan = CheckpointPlan(spec, fused=spec.fused_on_disk_natively, shards=2, data_seed=5)
    want, got = _both(tmp_path, plan)
    assert sorted(got.state) == sorted(want.state)
    for name, tensor in want.state.items():
        assert got.state[name].dtype == tensor.dtype, name
        assert _same_bits(got.state[name], tensor), name
    assert got.unexpected == frozenset()
    assert dict(got.aliases) == dict(want.aliases)
    assert torch.equal(got.buffers["model.rotary_emb.inv_freq"],
                       want.buffers["model.rotary_emb.inv_freq"])
    ids = torch.tensor([[0, 3, 1, 2]])
    want_logits = ReferenceLoader().forward(want, ids).float()
    got.model.float()  # the reference computes in float32 (see the transformers test)
    torch.testing.assert_close(adapter.loader.forward(got, ids).float(), want_logits,
                               rtol=1e-4, atol=1e-4)


def test_bytes_are_accelerates_compute_module_sizes(tmp_path):
    spec = SPECS["llama"]
    want, got = _both(tmp_path, CheckpointPlan(spec))
    assert adapter.loader.parameter_bytes(got) == ReferenceLoader().parameter_bytes(want)


@pytest.mark.xfail(strict=True, reason="accelerate's dtype_byte_size(torch.bool) is 1/8 "
                   "(a bit), torch stores one byte per bool: docs/findings/accelerate.md")
def test_bool_bytes(tmp_path):
    spec = ModelSpec(family="llama", extras=(ExtraParam("flags", "bool", (4,)),))
    want, got = _both(tmp_path, CheckpointPlan(spec))
    assert adapter.loader.parameter_bytes(got)["model.extras.flags"] == 4


def test_unexpected_keys_reported_and_raised_under_strict(tmp_path):
    spec = SPECS["phi3"]
    plan = CheckpointPlan(spec, fused=True,
                          extra_keys=(ExtraKey("model.unused_buffer", "int32", (4,)),))
    _, got = _both(tmp_path, plan)
    assert got.unexpected == {"model.unused_buffer"}
    with pytest.raises(UnexpectedKeysError):
        adapter.loader.load(str(tmp_path / "ckpt"), spec, LoadOptions(strict=True))


def test_shape_mismatch_is_mapped(tmp_path):
    spec = SPECS["phi3"]
    directory = CheckpointPlan(spec, fused=True,
                               wrong_shape=("model.layers.0.mlp.gate_up_proj.weight",)
                               ).write(tmp_path / "ckpt")
    with pytest.raises(ShapeMismatchError):
        adapter.loader.load(str(directory), spec, LoadOptions())


def test_a_weight_left_on_meta_is_absent_from_the_state(tmp_path):
    """accelerate leaves a weight the checkpoint lacks on the meta device, silently; the
    adapter's state leaves it out (a meta tensor holds no values), so the suite reports it
    absent instead of meeting a meta tensor (conformance/survival.py: a contract error)."""
    spec = SPECS["llama"]
    dropped = "model.layers.0.mlp.down_proj.bias"
    directory = CheckpointPlan(spec, dropped=(dropped,)).write(tmp_path / "ckpt")
    got = adapter.loader.load(str(directory), spec, LoadOptions())
    assert dropped not in got.state
    assert not [name for name, t in got.state.items() if t.is_meta]
    assert set(got.state) == set(spec.parameter_shapes()) - {dropped}
