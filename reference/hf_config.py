"""A real checkpoint's config.json -> the ModelSpec the reference loads it as.

Only what the reference can express is accepted; anything else is refused with one line
naming the field (`UnsupportedConfigError`), never approximated. What changes only the
forward pass and not the weights (RoPE scaling, sliding windows) is accepted but listed in
`SpecFromConfig.forward_only`: the rotary `inv_freq` buffer is then not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .contract import DTYPES, ModelSpec, QuantSpec, UnsupportedLayoutError

__all__ = ["UnsupportedConfigError", "SpecFromConfig", "spec_from_config"]

_FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "phi3": "Phi3ForCausalLM"}
_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
                "float": "float32"}


class UnsupportedConfigError(UnsupportedLayoutError):
    """config.json describes a model the reference cannot express; `subject` is the field."""


@dataclass(frozen=True)
class SpecFromConfig:
    spec: ModelSpec
    forward_only: tuple[str, ...] = ()  # fields accepted that change the forward, not weights


def _refuse(field: str, value: Any, why: str) -> UnsupportedConfigError:
    return UnsupportedConfigError(f"config.json: {field}={value!r}: {why}", subject=field)


def _rope(config: Mapping[str, Any]) -> tuple[float, tuple[str, ...]]:
    """rope_theta (top level, or in transformers 5's rope_parameters) and whether scaling
    is on (forward only)."""
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or (
        params if params.get("rope_type", "default") != "default" else None)
    return float(theta), (("rope_scaling",) if scaling else ())


@dataclass(frozen=True)
class _Quantized:
    """The serialized quantized form config.json declares, as ModelSpec's fields."""
    fp8_checkpoint: str | None = None
    fp8_input_scale: bool = False
    quant: QuantSpec | None = None


def _block_fp8(quant: Mapping[str, Any]) -> QuantSpec:
    """transformers' FineGrainedFP8Config / vLLM's Fp8Config with `weight_block_size`:
    float8_e4m3fn codes with a float32 `weight_scale_inv` per [bn, bk] block."""
    block = quant["weight_block_size"]
    if not (isinstance(block, (list, tuple)) and len(block) == 2
            and all(isinstance(b, int) and b > 0 for b in block)):
        raise _refuse("quantization_config.weight_block_size", block,
                      "two positive integers [block_n, block_k] are required")
    # Block checkpoints quantize activations per token group at run time (vLLM refuses
    # a static scheme with blocks); a static input scale has no place in the format.
    if quant.get("activation_scheme", "dynamic") != "dynamic":
        raise _refuse("quantization_config.activation_scheme", quant["activation_scheme"],
                      "block-wise FP8 is expressible with dynamic activations only")
    if quant.get("fmt", "e4m3") != "e4m3":
        raise _refuse("quantization_config.fmt", quant["fmt"], "only e4m3 codes are expressible")
    return QuantSpec("fp8_block", tuple(block))


def _quantized(config: Mapping[str, Any]) -> _Quantized:
    """The serialized quantized form the reference knows (per-tensor or block FP8), or a
    refusal."""
    quant = config.get("quantization_config")
    if not quant:
        return _Quantized()
    method = quant.get("quant_method")
    if method == "fp8":
        if quant.get("weight_block_size"):
            return _Quantized(quant=_block_fp8(quant))
        return _Quantized("fp8", quant.get("activation_scheme") == "static")
    if method == "compressed-tensors":
        groups = list((quant.get("config_groups") or {}).values())
        weights = [g.get("weights") or {} for g in groups]
        if len(groups) == 1 and weights[0].get("strategy") == "block":
            # compressed-tensors names the block grid `weight_scale` (the reference's
            # block format, like transformers and vLLM's fp8 method, `weight_scale_inv`)
            raise _refuse("quantization_config.config_groups", quant.get("config_groups"),
                          "compressed-tensors' block scheme stores its grid as "
                          "`weight_scale`; only quant_method 'fp8' with weight_block_size "
                          "(`weight_scale_inv`) is expressible")
        if len(groups) != 1 or weights[0].get("type") != "float" \
                or weights[0].get("num_bits") != 8 or weights[0].get("strategy") != "tensor":
            raise _refuse("quantization_config.config_groups", quant.get("config_groups"),
                          "only one float 8-bit per-tensor weight group is expressible")
        return _Quantized("compressed-tensors", groups[0].get("input_activations") is not None)
    raise _refuse("quantization_config.quant_method", method,
                  "only 'fp8' (per-tensor or block) and 'compressed-tensors' (per-tensor "
                  "FP8) are expressible")


def spec_from_config(config: Mapping[str, Any]) -> SpecFromConfig:
    """The ModelSpec for an HF config.json of a llama, qwen2 or phi3 decoder."""
    family = config.get("model_type")
    if family not in _FAMILIES:
        raise _refuse("model_type", family, f"the reference expresses {', '.join(_FAMILIES)}")
    for arch in config.get("architectures") or [_FAMILIES[family]]:
        if arch != _FAMILIES[family]:
            raise _refuse("architectures", config.get("architectures"),
                          f"expected {_FAMILIES[family]} for model_type {family}")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse("hidden_act", act, "the reference's MLP is SiLU-gated")
    if family == "phi3" and config.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse("partial_rotary_factor", config["partial_rotary_factor"],
                      "the reference rotates whole heads")
    required = {}
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
        value = config.get(field)
        if not isinstance(value, int) or value < 1:
            raise _refuse(field, value, "a positive integer is required")
        required[field] = value
    heads = required["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or required["hidden_size"] // heads
    dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    dtype = _DTYPE_NAMES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise _refuse("torch_dtype", dtype, f"the reference loads {', '.join(DTYPES)}")
    attention_bias = {"qwen2": True, "phi3": False}.get(family,
                                                        bool(config.get("attention_bias")))
    mlp_bias = bool(config.get("mlp_bias")) if family == "llama" else False
    if family != "llama" and config.get("mlp_bias"):
        raise _refuse("mlp_bias", True, f"{family} has no MLP bias")
    theta, forward_only = _rope(config)
    if config.get("use_sliding_window") or (family != "qwen2" and config.get("sliding_window")):
        forward_only += ("sliding_window",)
    quantized = _quantized(config)
    try:
        spec = ModelSpec(
            family=family, vocab_size=required["vocab_size"],
            hidden_size=required["hidden_size"],
            intermediate_size=required["intermediate_size"],
            num_layers=required["num_hidden_layers"], num_heads=heads, num_kv_heads=kv_heads,
            head_dim=head_dim, attention_bias=attention_bias, mlp_bias=mlp_bias,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), dtype=dtype,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=theta,
            fp8_checkpoint=quantized.fp8_checkpoint,
            fp8_input_scale=quantized.fp8_input_scale, quant=quantized.quant)
    except ValueError as exc:  # the spec's own validation, e.g. kv heads that do not divide
        raise UnsupportedConfigError(f"config.json: {exc}", subject="config.json") from None
    return SpecFromConfig(spec, forward_only)
