"""Per-tensor FP8 (float8_e4m3fn, M = 448), the `fp8` QuantFormat: what quantizing,
dequantizing and requantizing *mean*.

Per-tensor (or per-row) dynamic quantization, as semantics section 4 states it:

    s = amax(|W|) / M                    in float32, from the float32 values of W
    q = clamp(W / s, -M, M) -> e4m3fn     round to nearest even, saturating

Where real loaders legitimately differ, :class:`Fp8Rules` carries the declared variant
(contract.VARIANTS `fp8_*`) and every function here implements each value:

- the unit (`fp8_unit`): the fused q/k/v and gate/up parameter as one tensor (vLLM), each
  module of the family's native HF layout (transformers, torchao: separate q/k/v for
  llama and qwen2, fused qkv_proj for phi3), or each output row;
- `W / s` or `W * (1 / s)` (`fp8_scale_op`): they differ in the last bit of some codes;
  or `W * (M / amax)` with `s = 1 / (M / amax)` (`inverse`, SGLang's online path), which
  differs from both in the last bit of some codes and of the scale;
- the floor of `s` (`fp8_scale_floor`): `1 / (M * 512)` (vLLM's native path), `amax >=
  1e-12` (torchao.float8's training path), or none (vLLM's CUDA kernel, torchao's
  `quantize_`: an all-zero tensor gets `s = 0` and NaN codes, which P12 reports);
- the dtype of `amax / M` (`fp8_scale_dtype`): float32, or the weight's own (torchao);
- serialized scales of a fused parameter (`fp8_fused_scales`): requantized to their max
  (vLLM's `requantize_with_max_scale`), or kept per slot; and the precision of the
  dequantization before that requantization (`fp8_dequant`: float32, or float16 as vLLM
  does, which underflows for tiny scales and overflows for large ones).

Everything works on *canonical views* (one tensor per logical matrix, views into fused
parameters where a loader fuses), so a fused and a split in-memory layout quantize alike.
Nothing here knows about Hypothesis or pytest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import torch

from ..contract import VARIANTS, ModelSpec, NonFiniteInputError
from ..checkpoint import write_checkpoint
from ..names import FUSED_PROJECTIONS, to_checkpoint_tensors

__all__ = ["FP8", "FP8_MAX", "M512_FLOOR", "AMAX_EPS", "Fp8Rules", "online_scale",
           "online_inverse", "quantize_with_scale", "dequantize", "quantize_groups", "requantize_to_max",
           "scale_name", "input_scale_name", "check_finite_weight", "code_step",
           "quantization_groups", "export_fp8_checkpoint", "TENSOR_FP8"]

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
M512_FLOOR = 1.0 / (FP8_MAX * 512.0)   # vLLM's native path: _FP8_MIN_SCALING_FACTOR
AMAX_EPS = 1e-12                      # torchao.float8 (training): amax.clamp(min=1e-12)


def scale_name(weight: str) -> str:
    """`...q_proj.weight` -> `...q_proj.weight_scale`."""
    return weight + "_scale"


def input_scale_name(weight: str) -> str:
    """`...q_proj.weight` -> `...q_proj.input_scale`."""
    return weight[: -len("weight")] + "input_scale"


@dataclass(frozen=True)
class Fp8Rules:
    """The FP8 variants a loader declares (defaults: the first value of each)."""

    unit: str = "fused"
    scale_op: str = "divide"
    floor: str = "m512"
    fused_scales: str = "max_requant"
    dequant: str = "float32"
    scale_dtype: str = "float32"
    scale_storage: str = "float32"

    @classmethod
    def from_variants(cls, variants: Mapping[str, str]) -> "Fp8Rules":
        pick = {k: variants.get(k, VARIANTS[k][0]) for k in VARIANTS if k.startswith("fp8_")}
        return cls(unit=pick["fp8_unit"], scale_op=pick["fp8_scale_op"],
                   floor=pick["fp8_scale_floor"], fused_scales=pick["fp8_fused_scales"],
                   dequant=pick["fp8_dequant"], scale_dtype=pick["fp8_scale_dtype"],
                   scale_storage=pick["fp8_scale_storage"])

    # ----- serialized checkpoints as compressed-tensors readers keep them (issue 17) -----
    def fused_scales_of(self, spec: ModelSpec) -> str:
        """`max_requant` or `per_slot` for this checkpoint: `w8a16_per_slot` keeps slots
        only for a compressed-tensors checkpoint without input scales (weight-only)."""
        if self.fused_scales != "w8a16_per_slot":
            return self.fused_scales
        weight_only = spec.fp8_checkpoint == "compressed-tensors" and not spec.fp8_input_scale
        return "per_slot" if weight_only else "max_requant"

    def stored_scale(self, scale: torch.Tensor, weight_dtype: torch.dtype) -> torch.Tensor:
        """A serialized scale as the loader keeps it (`fp8_scale_storage`), as float32."""
        if self.scale_storage == "weight":
            return scale.to(weight_dtype).float()
        return scale


def check_finite_weight(name: str, weight: torch.Tensor) -> None:
    """Online quantization of NaN / Inf has no meaning (the scale becomes NaN or Inf and
    every code with it): refuse it, naming the tensor and the first bad index."""
    bad = ~torch.isfinite(weight)
    if bool(bad.any()):
        index = [int(i) for i in bad.nonzero()[0]]
        raise NonFiniteInputError(f"{name}: {int(bad.sum())} non-finite values (first at "
                                  f"{index}); FP8 quantization needs finite weights",
                                  subject=name)


def _online_amax(weight: torch.Tensor, rules: Fp8Rules) -> torch.Tensor:
    magnitude = weight.detach().abs()
    if rules.scale_dtype == "float32":
        magnitude = magnitude.float()
    amax = magnitude.amax(dim=-1) if rules.unit == "row" else magnitude.amax()
    return amax.clamp(min=AMAX_EPS) if rules.floor == "eps" else amax


def _inverse_scale(amax: torch.Tensor) -> torch.Tensor:
    """`inverse`: M / amax in float32, what the codes are multiplied by."""
    return FP8_MAX / amax.float()


def online_scale(weight: torch.Tensor, rules: Fp8Rules) -> torch.Tensor:
    """The dynamic scale of one quantization unit: float32, shape () (per tensor) or
    (rows,) (per row), with the declared floor."""
    amax = _online_amax(weight, rules)
    if rules.scale_op == "inverse":
        scale = _inverse_scale(amax).reciprocal()
    else:
        scale = (amax / FP8_MAX).float()
    if rules.floor == "m512":
        scale = scale.clamp(min=M512_FLOOR)
    return scale


def quantize_with_scale(values: torch.Tensor, scale: torch.Tensor, rules: Fp8Rules,
                        inverse: torch.Tensor | None = None) -> torch.Tensor:
    """FP8 codes of `values` at `scale` (a () scale, or a (rows,) one broadcast per row):
    float32 arithmetic, clamp to +-M (saturating), then round to nearest even. `inverse`
    (the `inverse` scale op's M / amax) is multiplied by instead of the scale's reciprocal."""
    x = values.detach().float()
    s = scale.float().reshape(-1, 1) if scale.dim() else scale.float()
    if inverse is not None:
        scaled = x * (inverse.float().reshape(-1, 1) if inverse.dim() else inverse.float())
    else:
        scaled = x / s if rules.scale_op == "divide" else x * s.reciprocal()
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def online_inverse(weight: torch.Tensor, rules: Fp8Rules) -> torch.Tensor | None:
    """What online codes of this unit are multiplied by under the `inverse` scale op (M /
    amax); None under the others, and under the m512 floor (which bounds the scale, so the
    codes use the bounded scale's reciprocal)."""
    if rules.scale_op != "inverse" or rules.floor == "m512":
        return None
    return _inverse_scale(_online_amax(weight, rules))


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """codes * scale, computed as `codes.to(dtype) * scale` (float16: as vLLM's
    per_tensor_dequantize does, so the scale is rounded to float16 as well)."""
    s = scale.reshape(-1, 1) if scale.dim() else scale
    return codes.to(dtype) * s


def code_step(codes: torch.Tensor) -> torch.Tensor:
    """The distance between each finite code's value and the next one up (in units of the
    unscaled FP8 grid): the tolerance of "within one code step"."""
    values = codes.float().abs()
    exponent = torch.floor(torch.log2(values.clamp(min=2.0 ** -6)))
    return torch.exp2(exponent - 3)  # 3 mantissa bits; subnormals step by 2**-9


def quantization_groups(spec: ModelSpec, unit: str) -> list[tuple[str, ...]]:
    """The canonical weights quantized together (sharing one scale), in order."""
    fuse = unit == "fused" or (unit == "tensor" and spec.fused_on_disk_natively)
    grouped: list[tuple[str, ...]] = []
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        for fused, parts in FUSED_PROJECTIONS.items():
            names = tuple(f"{prefix}.{p}.weight" for p in parts)
            grouped += [names] if fuse else [(n,) for n in names]
        grouped += [(f"{prefix}.self_attn.o_proj.weight",), (f"{prefix}.mlp.down_proj.weight",)]
    return grouped


def quantize_groups(weights: Mapping[str, torch.Tensor], spec: ModelSpec, rules: Fp8Rules,
                    only: set[str] | None = None
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Online quantization of float canonical weights: name -> (codes, effective scale).
    Each group (see `quantization_groups`) gets one scale from the amax of all its rows;
    with `only`, just the groups wholly inside it. Non-finite weights are refused."""
    out = {}
    for group in quantization_groups(spec, rules.unit):
        if only is not None and not set(group) <= only:
            continue
        for name in group:
            check_finite_weight(name, weights[name])
        if rules.unit == "row":
            (name,) = group
            scale, inverse = online_scale(weights[name], rules), online_inverse(weights[name], rules)
            out[name] = (quantize_with_scale(weights[name], scale, rules, inverse), scale)
            continue
        flat = torch.cat([weights[n].reshape(-1) for n in group])
        scale, inverse = online_scale(flat, rules), online_inverse(flat, rules)
        for name in group:
            out[name] = (quantize_with_scale(weights[name], scale, rules, inverse), scale.clone())
    return out


def requantize_to_max(codes: Mapping[str, torch.Tensor], scales: Mapping[str, torch.Tensor],
                      group: tuple[str, ...], rules: Fp8Rules
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """vLLM's post-processing of a fused parameter's per-slot scales: s_max = max(slots);
    each slot dequantized (in the declared precision) and requantized at s_max. Every slot
    is requantized, even the one already at s_max (float16 dequantization can move it)."""
    s_max = torch.stack([scales[n].float().reshape(()) for n in group]).max()
    dtype = torch.float16 if rules.dequant == "float16" else torch.float32
    return {n: (quantize_with_scale(dequantize(codes[n], scales[n].reshape(()), dtype), s_max,
                                    rules), s_max.clone()) for n in group}


def export_fp8_checkpoint(directory: Path, spec: ModelSpec, state: Mapping[str, torch.Tensor]
                          ) -> ModelSpec:
    """Offline quantization's output for an online-quantized `state` (per tensor): a
    serialized FP8 checkpoint, split on disk, holding its codes, scales and float tensors
    (compressed-tensors config). Returns the checkpoint's spec."""
    serialized = replace(spec, fp8_checkpoint="compressed-tensors", fp8_input_scale=False)
    tensors = to_checkpoint_tensors(serialized, state, fused=False)
    # compressed-tensors' per-tensor scale has shape [1] (its initialize_qparams)
    tensors = {k: t.reshape(1) if k.endswith("_scale") else t for k, t in tensors.items()}
    write_checkpoint(directory, serialized.to_hf_config(),
                     [sorted((k, t.detach().cpu().contiguous()) for k, t in tensors.items())])
    return serialized


class TensorFp8:
    """The `fp8` QuantFormat (per-tensor / per-row scales). Its specs keep their original
    fields (`ModelSpec.fp8_checkpoint`, `fp8_input_scale`): `quant` never names it."""

    name = "fp8"
    scale_suffix = "weight_scale"
    capabilities = ("fp8_online", "fp8_quantize", "fp8_serialized", "fp8_vllm_config")

    def tensor_shapes(self, quant, weight: str, shape: tuple[int, int]
                      ) -> dict[str, tuple[int, ...]]:
        return {scale_name(weight): ()}

    def quantization_config(self, quant) -> dict:
        raise NotImplementedError("per-tensor FP8 configs come from fp8_quantization_config")

    def dequantize(self, quant, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return dequantize(codes, scale)

    def check_layout(self, quant, spec: ModelSpec, tp_size: int, variants) -> None:
        return None  # per-tensor scales are replicated: every layout works


TENSOR_FP8 = TensorFp8()
