"""Differential mode (`python -m conformance.differential`) on tiny real-format checkpoints:
equal loaders pass (sharded, hub-cache layout, the transformers adapter), a mutant is caught
naming the tensor, divergences become records the reports read, and config.json is turned
into a spec or refused with one line naming the field."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conformance.differential import main
from generators.checkpoints import CheckpointPlan
from generators.hostile import hub_cache_layout
from reference.contract import ModelSpec, QuantSpec
from reference.hf_config import UnsupportedConfigError, spec_from_config
from tests.mutants import Mutant

LLAMA = ModelSpec(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
PHI3 = ModelSpec(family="phi3", vocab_size=64, hidden_size=32, intermediate_size=64,
                 num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)


FP8 = replace(LLAMA, dtype="bfloat16", fp8_checkpoint="fp8", fp8_input_scale=True)
# Different scales per q / k / v slot, so requantizing to their max changes codes.
FP8_SCALES = tuple((f"model.layers.{layer}.self_attn.{part}.weight_scale", value)
                   for layer in range(FP8.num_layers)
                   for part, value in (("q_proj", 0.5), ("k_proj", 0.25), ("v_proj", 1.0)))
# Block-wise FP8 as transformers / vLLM read it (quant_method fp8 + weight_block_size):
# 4x8 blocks, so each matrix has several and q/k/v shards are whole block rows.
FP8_BLOCK = replace(LLAMA, dtype="bfloat16", quant=QuantSpec("fp8_block", (4, 8)))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("differential")
    plain = CheckpointPlan(LLAMA, shards=2, data_seed=3).write(root / "plain")
    return {"plain": plain, "hub": hub_cache_layout(plain, root / "hub"),
            "phi3": CheckpointPlan(PHI3, fused=True, shards=2, data_seed=3).write(root / "phi3"),
            "fp8": CheckpointPlan(FP8, shards=2, data_seed=5, fp8_scales=FP8_SCALES).write(
                root / "fp8"),
            "fp8_block": CheckpointPlan(FP8_BLOCK, shards=2, data_seed=5).write(root / "fp8_block")}


def _run(capsys, tmp_path, *args: str) -> tuple[int, str, list[dict]]:
    records = tmp_path / "records"
    code = main([*args, "--records", str(records)])
    out = capsys.readouterr()
    lines = [json.loads(line) for f in sorted(records.glob("records-*.jsonl"))
             for line in f.read_text().splitlines()]
    return code, out.out + out.err, lines


@pytest.mark.parametrize("layout", ["plain", "hub"])
def test_the_reference_equals_itself(layout, checkpoints, capsys, tmp_path):
    code, out, records = _run(capsys, tmp_path, "--loader", "reference-split",
                              "--checkpoint", str(checkpoints[layout]))
    assert code == 0, out
    assert "layer 1: 9 tensors" in out and out.splitlines()[-1].startswith("EQUAL")
    assert "GB/s" in out and "peak RSS" in out
    assert [r["type"] for r in records] == ["run", "end"]


def test_the_transformers_adapter_on_the_hub_cache_layout(checkpoints, capsys, tmp_path):
    pytest.importorskip("transformers")
    code, out, _ = _run(capsys, tmp_path, "--loader", "transformers",
                        "--checkpoint", str(checkpoints["hub"]))
    assert code == 0, out


def test_a_tp_mutant_is_caught_naming_the_tensor(checkpoints, capsys, tmp_path):
    code, out, records = _run(capsys, tmp_path, "--loader", "tests.mutants.p1_kv_replication_modulo",
                              "--checkpoint", str(checkpoints["plain"]), "--tp", "4")
    assert code == 1, out
    assert "model.layers.0.self_attn.k_proj.weight" in out and "tp rank 1/4" in out
    divergent = [r for r in records if r["type"] == "divergence"]
    assert divergent and divergent[0]["property"] == "differential"
    assert any(d["subject"].endswith("k_proj.weight") for d in divergent[0]["divergences"])
    assert "--tp 4" in divergent[0]["rerun"]


def test_an_unwritten_fused_slot_is_caught(checkpoints, capsys, tmp_path):
    code, out, _ = _run(capsys, tmp_path, "--loader",
                        "tests.mutants.p2_gate_up_second_half_unwritten",
                        "--checkpoint", str(checkpoints["phi3"]))
    assert code == 1, out
    assert "model.layers.0.mlp.up_proj.weight" in out and "poison pattern" in out


def test_fp8_matrices_are_compared_per_logical_matrix(checkpoints, capsys, tmp_path):
    code, out, _ = _run(capsys, tmp_path, "--loader", "reference",
                        "--checkpoint", str(checkpoints["fp8"]))
    assert code == 0, out
    code, out, _ = _run(capsys, tmp_path, "--loader",
                        "tests.mutants.p3_max_scale_without_requantizing",
                        "--checkpoint", str(checkpoints["fp8"]))
    assert code == 1, out
    assert re.search(r"model\.layers\.0\.self_attn\.k_proj \(slot 1 \(k_proj\) of "
                     r"model\.layers\.0\.self_attn\.qkv_proj\): (scale differs|\d+ FP8 codes "
                     r"differ under an equal scale)", out), out


def test_block_fp8_checkpoints_are_compared_per_block(checkpoints, capsys, tmp_path):
    """config.json's weight_block_size becomes the reference's block format; a loader that
    divides by weight_scale_inv (a multiplier in vLLM and transformers) is caught per block."""
    code, out, _ = _run(capsys, tmp_path, "--loader", "reference",
                        "--checkpoint", str(checkpoints["fp8_block"]))
    assert code == 0, out
    assert "fp8_block [4x8] checkpoint" in out
    code, out, _ = _run(capsys, tmp_path, "--loader", "tests.mutants.p3b_scale_inv_as_divisor",
                        "--checkpoint", str(checkpoints["fp8_block"]))
    assert code == 1, out
    assert re.search(r"model\.layers\.0\.self_attn\.k_proj \(slot 1 \(k_proj\) of "
                     r"model\.layers\.0\.self_attn\.qkv_proj\): block \(\d+, \d+\) .*"
                     r"weight_scale_inv expected \S+, found \S+", out), out


def test_an_inexpressible_config_is_refused_in_one_line(checkpoints, capsys, tmp_path):
    directory = tmp_path / "gelu"
    directory.mkdir()
    config = json.loads((checkpoints["plain"] / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    code, out, _ = _run(capsys, tmp_path, "--loader", "reference", "--checkpoint", str(directory))
    assert code == 2
    assert out.strip() == "ERROR: config.json: hidden_act='gelu': the reference's MLP is SiLU-gated"


@pytest.mark.parametrize("spec", [
    LLAMA, PHI3, ModelSpec(family="qwen2", attention_bias=True, tie_word_embeddings=True,
                           dtype="bfloat16"),
    ModelSpec(family="llama", attention_bias=True, mlp_bias=True, fp8_checkpoint="fp8",
              fp8_input_scale=True),
    ModelSpec(family="llama", fp8_checkpoint="compressed-tensors"),
    FP8_BLOCK,
])
def test_a_generated_config_gives_back_its_spec(spec):
    config = spec.to_hf_config()
    config.pop("loadcheck")
    assert spec_from_config(config).spec == spec


@pytest.mark.parametrize("edit,field", [
    ({"model_type": "mistral"}, "model_type"),
    ({"hidden_act": "gelu_pytorch_tanh"}, "hidden_act"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config.quant_method"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}},
     "quantization_config.weight_block_size"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
                              "activation_scheme": "static"}},
     "quantization_config.activation_scheme"),
    ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"type": "float", "num_bits": 8, "strategy": "block",
                                "block_structure": [128, 128]}}}}},
     "quantization_config.config_groups"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"torch_dtype": "float8_e4m3fn"}, "torch_dtype"),
])
def test_what_the_reference_cannot_express_is_named(edit, field):
    config = {**LLAMA.to_hf_config(), **edit}
    with pytest.raises(UnsupportedConfigError) as raised:
        spec_from_config(config)
    assert raised.value.subject == field and "\n" not in str(raised.value)


def test_rope_scaling_is_accepted_as_forward_only():
    config = {**LLAMA.to_hf_config(), "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    derived = spec_from_config(config)
    assert derived.spec == LLAMA and derived.forward_only == ("rope_scaling",)


def test_the_fast_equality_is_bit_for_bit():
    """same_bits (memcmp, the comparison's fast path) tells apart what == would not."""
    import torch
    from conformance.tensor_diff import same_bits
    zeros = torch.zeros(4, 6, dtype=torch.bfloat16)
    assert same_bits(zeros, zeros.clone())
    assert not same_bits(zeros, -zeros)  # -0.0 == 0.0, but not bit for bit
    nan = torch.full((5,), float("nan"))
    assert same_bits(nan, nan.clone())  # NaN != NaN, but the same bits
    other_nan = (nan.view(torch.int32) + 1).view(torch.float32)
    assert not same_bits(nan, other_nan)  # another NaN payload
    grid = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    assert same_bits(grid.t(), grid.t().contiguous())  # a transposed view, by value
    assert not same_bits(grid.t(), grid.reshape(6, 4))



_RELEASE = threading.Event()  # set when its test is done, so the abandoned call returns


class _NeverReturns(Mutant):
    """A loader that waits forever (releasing the GIL, as a stuck read would)."""

    def load(self, checkpoint, spec, options):
        while not _RELEASE.is_set():
            time.sleep(0.05)
        return super().load(checkpoint, spec, options)


class _Aborts(Mutant):
    """A loader that aborts the interpreter, as a failed C++ assertion does."""

    def load(self, checkpoint, spec, options):
        os.abort()


NEVER_RETURNS, ABORTS = _NeverReturns("never_returns"), _Aborts("aborts")


def test_a_hung_candidate_is_a_hang_record(checkpoints, capsys, tmp_path):
    try:
        code, out, records = _run(capsys, tmp_path, "--loader",
                                  "tests.test_differential:NEVER_RETURNS", "--checkpoint",
                                  str(checkpoints["plain"]), "--candidate-timeout", "1")
    finally:
        _RELEASE.set()
    assert code == 1 and "STOPPED: the candidate hung" in out, out
    (hang,) = [r for r in records if r.get("type") == "divergence"]
    assert hang["severity"] == "hang" and "no answer within 1 s" in hang["divergences"][0][
        "message"]


def test_an_aborting_candidate_is_a_crash_record_with_isolate(checkpoints, capsys, tmp_path):
    code, out, records = _run(capsys, tmp_path, "--loader", "tests.test_differential:ABORTS",
                              "--checkpoint", str(checkpoints["plain"]), "--isolate")
    assert code == 1 and "STOPPED: the candidate crashed" in out, out
    (crash,) = [r for r in records if r.get("type") == "divergence"]
    assert crash["severity"] == "crash" and "SIGABRT" in crash["divergences"][0]["message"]
    assert "--isolate" in crash["rerun"]


def test_the_reference_reads_what_it_converts_only_when_compared(capsys, tmp_path):
    """A float32 checkpoint of a bfloat16 model: every tensor is converted, none mapped. The
    streamed reference reads each when its group is compared, with the eager one's bits."""
    from conformance.differential import StreamedReference
    from conformance.tensor_diff import same_bits
    from reference.contract import LoadOptions
    from reference.loading import ReferenceLoader
    spec = replace(LLAMA, dtype="bfloat16")
    directory = CheckpointPlan(spec, shards=2, disk_dtype="float32", data_seed=3).write(
        tmp_path / "f32")
    streamed = StreamedReference()
    result = streamed.load(str(directory), spec, LoadOptions())
    assert set(streamed.pending) == set(result.state)  # nothing read at load
    eager = ReferenceLoader().load(str(directory), spec, LoadOptions()).state
    streamed.fill(list(result.state))
    assert not streamed.pending
    assert [n for n, t in result.state.items() if not same_bits(eager[n], t)] == []
    streamed.close()
    code, out, _ = _run(capsys, tmp_path, "--loader", "reference-split", "--checkpoint",
                        str(directory), "--tp", "2")
    assert code == 0 and "EQUAL: 0 divergences" in out, out
