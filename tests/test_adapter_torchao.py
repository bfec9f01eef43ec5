"""The torchao adapter (conformance/adapters/torchao.py): it loads, quantizes with torchao's
real `quantize_(..., Float8WeightOnlyConfig(...))`, and reports torchao's codes and scales
faithfully in the canonical FP8 form. Skipped where torchao is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")

from conformance.adapters import torchao as adapter  # noqa: E402
from reference.checkpoint import write_checkpoint  # noqa: E402
from reference.contract import LoadOptions, ModelSpec, check_loader  # noqa: E402

FP8 = torch.float8_e4m3fn
SPECS = {
    "llama": ModelSpec(family="llama", vocab_size=8, hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                       attention_bias=True),
    "phi3": ModelSpec(family="phi3", vocab_size=8, hidden_size=16, intermediate_size=16,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8),
}


def _fused_checkpoint_tensors(spec: ModelSpec, state: dict[str, torch.Tensor]
                              ) -> dict[str, torch.Tensor]:
    """phi3 stores qkv_proj and gate_up_proj fused on disk."""
    if spec.family != "phi3":
        return state
    out = dict(state)
    p = "model.layers.0."
    out[p + "self_attn.qkv_proj.weight"] = torch.cat(
        [out.pop(p + f"self_attn.{m}.weight") for m in ("q_proj", "k_proj", "v_proj")])
    out[p + "mlp.gate_up_proj.weight"] = torch.cat(
        [out.pop(p + f"mlp.{m}.weight") for m in ("gate_proj", "up_proj")])
    return out


def _write(tmp_path: Path, spec: ModelSpec, *, zero: str | None = None, gain: float = 1.0
           ) -> tuple[Path, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in spec.parameter_shapes().items():
        t = torch.randn(shape, generator=gen)
        if name in spec.quantized_weights():
            t = t * gain
        state[name] = t.to(getattr(torch, spec.dtype))
    if zero is not None:
        state[zero] = torch.zeros_like(state[zero])
    directory = tmp_path / "ckpt"
    tensors = _fused_checkpoint_tensors(spec, state)
    write_checkpoint(directory, spec.to_hf_config(), [sorted(tensors.items())])
    return directory, state


def _fp8_half_step_bound(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Half an e4m3 code step at each weight, in weight units: 2^-4 relative for normal
    codes (3 mantissa bits), 2^-10 * scale absolute at the subnormal end."""
    s = scale.reshape(-1, 1) if scale.dim() else scale
    return w.abs() * 2.0 ** -4 + s * 2.0 ** -10


def test_both_loaders_satisfy_the_contract():
    assert check_loader(adapter.loader) == []
    assert check_loader(adapter.row_loader) == []
    assert adapter.loader.variants["fp8_unit"] == "tensor"
    assert adapter.row_loader.variants["fp8_unit"] == "row"


@pytest.mark.parametrize("family", sorted(SPECS))
def test_plain_load_gives_the_checkpoint(tmp_path, family):
    spec = SPECS[family]
    directory, state = _write(tmp_path, spec)
    result = adapter.loader.load(str(directory), spec, LoadOptions(track=True, strict=True))
    assert set(result.state) == set(state)
    for name, tensor in state.items():
        assert torch.equal(result.state[name], tensor), name
    assert result.missing == frozenset() and result.unexpected == frozenset()


@pytest.mark.parametrize("which", ["loader", "row_loader"])
@pytest.mark.parametrize("family", sorted(SPECS))
def test_online_fp8_codes_and_scales(tmp_path, family, which):
    loader = getattr(adapter, which)
    spec = SPECS[family]
    directory, state = _write(tmp_path, spec)
    result = loader.load(str(directory), spec, LoadOptions(quantize="fp8"))
    for name in spec.quantized_weights():
        codes, scale, w = result.state[name], result.state[name + "_scale"], state[name]
        assert codes.dtype == FP8 and codes.shape == w.shape, name
        assert scale.dtype == torch.float32, name
        assert tuple(scale.shape) == (() if which == "loader" else (w.shape[0],)), name
        err = (codes.float() * (scale.reshape(-1, 1) if scale.dim() else scale) - w).abs()
        assert bool((err <= _fp8_half_step_bound(w, scale)).all()), name
        # torchao's formula (float32 weights): s = amax / 448, codes = clamp(W / s) -> e4m3fn
        amax = w.abs().amax(dim=-1) if scale.dim() else w.abs().amax()
        if family == "phi3" and which == "loader" and "o_proj" not in name \
                and "down_proj" not in name:
            continue  # one scale per fused module: checked below
        assert torch.equal(scale, amax / 448.0), name
        s = scale.reshape(-1, 1) if scale.dim() else scale
        expected = (w / s).clamp(-448, 448).to(FP8)
        assert torch.equal(codes.view(torch.uint8), expected.view(torch.uint8)), name
    for key, value in result.state.items():  # biases, norms, embedding, head: untouched
        if key in state and key not in spec.quantized_weights():
            assert torch.equal(value, state[key]), key


def test_phi3_fused_module_has_one_scale(tmp_path):
    spec = SPECS["phi3"]
    directory, state = _write(tmp_path, spec)
    result = adapter.loader.load(str(directory), spec, LoadOptions(quantize="fp8"))
    p = "model.layers.0.self_attn."
    scales = [result.state[p + f"{m}.weight_scale"] for m in ("q_proj", "k_proj", "v_proj")]
    fused = torch.cat([state[p + f"{m}.weight"] for m in ("q_proj", "k_proj", "v_proj")])
    for s in scales:
        assert torch.equal(s, fused.abs().amax() / 448.0)


@pytest.mark.parametrize("which", ["loader", "row_loader"])
def test_load_then_quantize_equals_quantize_on_load(tmp_path, which):
    loader = getattr(adapter, which)
    spec = SPECS["llama"]
    directory, _ = _write(tmp_path, spec, gain=1e-3)
    on_load = loader.load(str(directory), spec, LoadOptions(quantize="fp8")).state
    after = loader.quantize(loader.load(str(directory), spec, LoadOptions())).state
    assert set(on_load) == set(after)
    for name in on_load:
        assert torch.equal(on_load[name].view(torch.uint8) if on_load[name].dtype == FP8
                           else on_load[name],
                           after[name].view(torch.uint8) if after[name].dtype == FP8
                           else after[name]), name


@pytest.mark.parametrize("which", ["loader", "row_loader"])
def test_zero_weight_is_reported_as_torchao_quantizes_it(tmp_path, which):
    """torchao 0.18.0 floors nothing: an all-zero weight gets scale 0 and NaN codes (0 / 0;
    pytorch/ao#4713). The adapter reports that as is; a fixed torchao gives a finite scale
    that dequantizes to exactly 0, which passes too."""
    loader = getattr(adapter, which)
    spec = SPECS["llama"]
    zero = "model.layers.0.mlp.up_proj.weight"
    directory, _ = _write(tmp_path, spec, zero=zero)
    state = loader.load(str(directory), spec, LoadOptions(quantize="fp8")).state
    codes, scale = state[zero], state[zero + "_scale"]
    if bool((scale == 0).all()):
        assert bool(codes.float().isnan().all())  # torchao's known bug, surfaced unchanged
    else:
        s = scale.reshape(-1, 1) if scale.dim() else scale
        assert bool(torch.isfinite(scale).all()) and bool((codes.float() * s == 0).all())
