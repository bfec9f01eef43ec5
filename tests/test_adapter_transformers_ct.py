"""The transformers + compressed-tensors adapter (conformance/adapters/transformers_ct.py):
`from_pretrained` on serialized per-tensor FP8 checkpoints keeps the FP8 codes and
compressed-tensors' `[1]` scales, which the canonical state reports per logical matrix.
These pin its declared variants and its known findings (docs/findings/transformers-ct.md),
and check our generator's compressed-tensors form against compressed-tensors' own export
(`ModelCompressor`). Skipped where compressed-tensors is not installed (`tox -e
transformers-ct`)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("compressed_tensors")

from conformance.adapters import transformers_ct as adapter  # noqa: E402
from generators.checkpoints import CheckpointPlan  # noqa: E402
from reference.contract import (LoadOptions, ModelSpec, ShapeMismatchError,  # noqa: E402
                                check_loader, fp8_quantization_config)
from reference.loading import ReferenceLoader  # noqa: E402

REFERENCE = ReferenceLoader(variants=adapter.loader.variants)
LLAMA = ModelSpec(family="llama", dtype="bfloat16", fp8_checkpoint="compressed-tensors")
PHI3 = ModelSpec(family="phi3", num_heads=4, num_kv_heads=2, head_dim=4, dtype="float16",
                 fp8_checkpoint="compressed-tensors", fp8_input_scale=True)
# distinct slot scales, one of them not a bfloat16 (so keeping it in bfloat16 rounds it)
SCALES = {"self_attn.q_proj": 0.0123, "self_attn.k_proj": 0.5, "self_attn.v_proj": 2.0 ** -6,
          "self_attn.o_proj": 0.75, "mlp.gate_proj": 3.0, "mlp.up_proj": 1.0 / 3,
          "mlp.down_proj": 0.25}


def _plan(spec: ModelSpec, **changes) -> CheckpointPlan:
    scales = {f"model.layers.0.{m}.{leaf}": v for m, v in SCALES.items()
              for leaf in ("weight_scale",) + (("input_scale",) if spec.fp8_input_scale else ())}
    if spec.fused_on_disk_natively:  # one scale per fused tensor on disk
        for leaf in ("weight_scale", "input_scale"):
            for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
                names = [n for n in scales if n.endswith(leaf) and any(g in n for g in group)]
                for name in names:
                    scales[name] = scales[names[0]]
    plan = CheckpointPlan(spec, fused=spec.fused_on_disk_natively, data_seed=4,
                          fp8_scales=tuple(sorted(scales.items())), scale_as_vector=True)
    return replace(plan, **changes)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def test_is_a_valid_loader():
    assert check_loader(adapter.loader) == []
    assert adapter.make_loader().name == "transformers-ct"
    assert "compressed-tensors 0." in adapter.loader.version


@pytest.mark.parametrize("spec", [LLAMA, PHI3], ids=["llama-split", "phi3-fused-input-scales"])
def test_loads_like_the_reference_under_its_variants(tmp_path, spec):
    directory = _plan(spec).write(tmp_path / "ckpt")
    want = REFERENCE.load(str(directory), spec, LoadOptions())
    got = adapter.loader.load(str(directory), spec, LoadOptions())
    assert sorted(got.state) == sorted(want.state)
    for name, tensor in want.state.items():
        assert got.state[name].dtype == tensor.dtype, name
        assert got.state[name].shape == tensor.shape, name
        assert _same_bits(got.state[name], tensor), name
    assert got.missing == want.missing == frozenset()


def test_a_float32_scale_is_kept_in_the_weight_dtype(tmp_path):
    """Finding T1: compressed-tensors' scale parameter has the weight's dtype."""
    directory = _plan(LLAMA).write(tmp_path / "ckpt")
    got = adapter.loader.load(str(directory), LLAMA, LoadOptions())
    scale = got.state["model.layers.0.self_attn.q_proj.weight_scale"]
    assert float(scale) == float(torch.tensor(0.0123).to(torch.bfloat16)) != \
        float(torch.tensor(0.0123))


def test_a_scalar_scale_is_refused_as_a_shape_mismatch(tmp_path):
    """A `()` scale is not compressed-tensors' form ([1]); transformers refuses it."""
    directory = _plan(LLAMA, scale_as_vector=False).write(tmp_path / "ckpt")
    with pytest.raises(ShapeMismatchError, match="ignore_mismatched_sizes"):
        adapter.loader.load(str(directory), LLAMA, LoadOptions())


def test_vllm_fp8_config_loads_codes_without_scales(tmp_path):
    """Finding T2: `quant_method: fp8` is transformers' block-wise FineGrainedFP8; on a
    per-tensor checkpoint the codes load into plain Linear and the scales are dropped
    (listed as unexpected)."""
    spec = replace(LLAMA, fp8_checkpoint="fp8")
    directory = _plan(spec).write(tmp_path / "ckpt")
    got = adapter.loader.load(str(directory), spec, LoadOptions())
    assert got.state["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert "model.layers.0.self_attn.q_proj.weight_scale" not in got.state
    assert "model.layers.0.self_attn.q_proj.weight_scale" in got.unexpected


def test_dequantize_gives_codes_times_the_checkpoint_scale(tmp_path):
    """The dense route (`dequantize=True`) multiplies by the checkpoint's float32 scale,
    not the rounded one the compressed route keeps: the two routes give different
    weights for the same checkpoint (finding T1)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    directory = _plan(LLAMA).write(tmp_path / "ckpt")
    codes = adapter.loader.load(str(directory), LLAMA, LoadOptions()).state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype="auto",
            quantization_config=CompressedTensorsConfig(dequantize=True))
    name = "model.layers.0.self_attn.q_proj.weight"
    weight = dict(dense.named_parameters())[name].detach()
    assert weight.dtype == torch.bfloat16
    checkpoint_scale = torch.tensor(SCALES["self_attn.q_proj"])
    assert torch.equal(weight, (codes[name].float() * checkpoint_scale).to(torch.bfloat16))
    rounded = (codes[name].float() * codes[name + "_scale"]).to(torch.bfloat16)
    assert not torch.equal(weight, rounded)


def test_our_compressed_tensors_form_matches_its_own_export(tmp_path):
    """compressed-tensors' ModelCompressor, given the same codes and scales, writes the
    same keys, shapes and codes, and the same quantization fields. What differs, by
    design: our float tensors and scales are float32 on disk (it writes the model's
    dtype), which every reader here converts."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    ours = _plan(LLAMA).write(tmp_path / "ours")
    with safe_open(str(ours / "model.safetensors"), "pt") as f:
        written = {k: f.get_tensor(k) for k in f.keys()}
    config = AutoConfig.from_pretrained(str(ours))
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    apply_quantization_config(model, QuantizationConfig.model_validate(
        fp8_quantization_config("compressed-tensors", False)))
    with torch.no_grad():  # the dense weights whose export must give our codes back
        for name, param in model.named_parameters():
            value = written[name]
            if value.dtype == torch.float8_e4m3fn:
                value = value.float() * written[name + "_scale"].float()
            param.copy_(value.reshape(param.shape).to(param.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, "float-quantized")
    compressor.compress_model(model)
    model.save_pretrained(str(tmp_path / "theirs"))
    compressor.update_config(str(tmp_path / "theirs"))
    with safe_open(str(tmp_path / "theirs" / "model.safetensors"), "pt") as f:
        exported = {k: f.get_tensor(k) for k in f.keys()}

    assert sorted(exported) == sorted(written)
    for key, tensor in exported.items():
        assert tensor.shape == written[key].shape, key
        if tensor.dtype == torch.float8_e4m3fn:
            assert _same_bits(tensor, written[key]), key
        else:
            assert (tensor.dtype, written[key].dtype) == (torch.bfloat16, torch.float32), key
    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())["quantization_config"]
    mine = json.loads((ours / "config.json").read_text())["quantization_config"]
    for field in ("quant_method", "format", "quantization_status", "ignore"):
        assert theirs[field] == mine[field], field
    group, my_group = theirs["config_groups"]["group_0"], mine["config_groups"]["group_0"]
    assert group["targets"] == my_group["targets"]
    assert group["input_activations"] == my_group["input_activations"] is None
    for field, value in group["weights"].items():
        if field in my_group["weights"]:
            assert my_group["weights"][field] == value, field
