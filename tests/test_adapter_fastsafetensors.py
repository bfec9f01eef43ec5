"""The fastsafetensors adapter (conformance/adapters/fastsafetensors.py): the reference's
plan with fastsafetensors parsing every header and reading every byte. It loads generated
checkpoints bit for bit like the reference, maps fastsafetensors' refusals onto the error
family naming the file, and pins the known differences of its header validation
(docs/findings/fastsafetensors.md), so that a release changing them shows up here.
Skipped where fastsafetensors is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("fastsafetensors")

from conformance.adapters import fastsafetensors as adapter  # noqa: E402
from conformance.compare import compare_outcomes, run_outcome  # noqa: E402
from conformance.harness import name_sets  # noqa: E402
from generators.checkpoints import CheckpointPlan  # noqa: E402
from generators.hostile import HOSTILE_CASES  # noqa: E402
from reference.contract import (CorruptCheckpointError, ExtraParam, LoadOptions,  # noqa: E402
                                ModelSpec, UnsupportedDtypeError, check_loader)
from reference.loading import ReferenceLoader  # noqa: E402

REFERENCE = ReferenceLoader()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def _assert_same_load(directory: Path, spec: ModelSpec, options: LoadOptions = LoadOptions()):
    want = REFERENCE.load(str(directory), spec, options)
    got = adapter.loader.load(str(directory), spec, options)
    assert sorted(got.state) == sorted(want.state)
    for name, tensor in want.state.items():
        assert got.state[name].dtype == tensor.dtype, name
        assert _same_bits(got.state[name], tensor), name
    assert (got.loaded, got.missing, got.unexpected) == (want.loaded, want.missing,
                                                         want.unexpected)


def test_is_a_valid_loader():
    assert check_loader(adapter.loader) == []
    assert adapter.make_loader().name == "fastsafetensors"
    assert "fastsafetensors 0." in adapter.loader.version


EXTRAS = (ExtraParam("packed", "int32", (3, 4)), ExtraParam("mask", "bool", (5,), layer=0),
          ExtraParam("codes", "float8_e4m3fn", (2, 8)))


@pytest.mark.parametrize("spec, fused, shards", [
    (ModelSpec(family="llama", num_layers=2, attention_bias=True, extras=EXTRAS), False, 2),
    (ModelSpec(family="qwen2", attention_bias=True, tie_word_embeddings=True,
               dtype="bfloat16"), True, 1),
    (ModelSpec(family="phi3", num_heads=4, num_kv_heads=2, head_dim=4, dtype="float16"),
     True, 3),
    (ModelSpec(family="llama", dtype="bfloat16", fp8_checkpoint="compressed-tensors",
               fp8_input_scale=True), False, 2),
])
def test_loads_like_the_reference(tmp_path, spec, fused, shards):
    directory = CheckpointPlan(spec, fused=fused, shards=shards, data_seed=5).write(
        tmp_path / "ckpt")
    _assert_same_load(directory, spec)


def test_a_tensor_parallel_rank_reads_its_slices(tmp_path):
    spec = ModelSpec(family="llama", num_heads=4, num_kv_heads=2, head_dim=4)
    directory = CheckpointPlan(spec, shards=2, data_seed=9).write(tmp_path / "ckpt")
    _assert_same_load(directory, spec, LoadOptions(tp_size=2, tp_rank=1))


def _hostile(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / "hostile"
    directory.mkdir()
    HOSTILE_CASES[name].write(directory)
    return directory


@pytest.mark.parametrize("name", ["header-length-past-eof", "file-shorter-than-prefix",
                                  "header-not-json", "shape-bytes-mismatch",
                                  "body-truncated"])
def test_its_header_refusals_map_to_corrupt_checkpoint(tmp_path, name):
    directory = _hostile(tmp_path, name)
    with pytest.raises(CorruptCheckpointError, match="fastsafetensors") as refused:
        adapter.loader.load(str(directory), HOSTILE_CASES[name].spec, LoadOptions())
    assert refused.value.subject.endswith(".safetensors")


def test_an_unknown_dtype_is_unsupported(tmp_path):
    directory = _hostile(tmp_path, "dtype-unknown")
    with pytest.raises(UnsupportedDtypeError, match="F128"):
        adapter.loader.load(str(directory), HOSTILE_CASES["dtype-unknown"].spec, LoadOptions())


def test_trailing_bytes_load_under_its_declaration_and_diverge_without_it(tmp_path):
    """F6: fastsafetensors ignores bytes after the data section (its declared
    `trailing_bytes=allow`); the reference under the same declaration agrees, and a
    loader declaring the default `refuse` with this reader is caught."""
    spec = ModelSpec(family="llama")
    directory = CheckpointPlan(spec, data_seed=4).write(tmp_path / "ckpt")
    with open(directory / "model.safetensors", "ab") as f:
        f.write(bytes(8))
    assert adapter.loader.variants["trailing_bytes"] == "allow"
    allowing = ReferenceLoader(variants={"trailing_bytes": "allow"})
    want = allowing.load(str(directory), spec, LoadOptions())
    got = adapter.loader.load(str(directory), spec, LoadOptions())
    for name, tensor in want.state.items():
        assert _same_bits(got.state[name], tensor), name

    refused = run_outcome(lambda: REFERENCE.load(str(directory), spec, LoadOptions()))
    assert isinstance(refused.error, CorruptCheckpointError)
    found = run_outcome(lambda: adapter.loader.load(str(directory), spec, LoadOptions()))
    divergences = compare_outcomes(refused, found, any_refusal=True, device="cpu",
                                   name_sets=name_sets(adapter.loader.capabilities))
    assert divergences, "a reader that loads what its declaration refuses must diverge"
