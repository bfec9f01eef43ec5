"""The transformers + compressed-tensors adapter (`--loader transformers-ct`):
`AutoModelForCausalLM.from_pretrained` on serialized per-tensor FP8 checkpoints, the way
most FP8 checkpoints of the hub are read outside vLLM.

What runs is transformers' own path, unchanged (the transformers adapter's `load`): for a
`quant_method: compressed-tensors` config, transformers' CompressedTensorsHfQuantizer
applies compressed-tensors' quantization config to the meta model
(`apply_quantization_config`, then `compress_model`: every targeted Linear gets an FP8
`weight` and a `weight_scale` of shape `[1]`, plus `input_scale` for static activations),
and the checkpoint tensors load into those parameters as they are (`run_compressed`, the
default: `dequantize=False`). The model keeps the FP8 codes; compressed-tensors
decompresses them on the first forward pass.

Translation, beyond the transformers adapter's:
- the canonical state of a quantized linear: its FP8 codes (phi3's fused `qkv_proj` /
  `gate_up_proj` as row views) and its scales as float32 of shape `()`, one per logical
  matrix (a fused module's one scale stands for each of its slots). compressed-tensors
  keeps a scale in the weight's dtype; the float32 view is exact;
- nothing else: a checkpoint transformers reads differently (vLLM's `quant_method: fp8`
  config is transformers' block-wise FineGrainedFP8 method) is translated as it loads,
  and the suite shows what became of it (docs/findings/transformers-ct.md).

`dequantize=True` (the dense route) returns dense weights, not FP8 codes: it is not a
`fp8_serialized` loader; tests/test_adapter_transformers_ct.py checks it against
codes * scale instead. Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

from importlib.metadata import version as _dist_version

import torch

import compressed_tensors  # noqa: F401  (transformers needs it for this config)

from reference.contract import LoadOptions, LoadResult, ModelSpec

from ._hf import FUSED, fused_rows
from .transformers import TransformersLoader

__all__ = ["TransformersCtLoader", "loader", "make_loader"]

_SCALES = ("weight_scale", "input_scale")


def _fp8_state(model: torch.nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Canonical FP8 entries: each quantized linear's scales as float32 `()`, per logical
    matrix (its codes are already in the canonical state, as the transformers adapter
    returns every HF parameter)."""
    state: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float8_e4m3fn:
            continue
        fused = next((f for f in FUSED if module_name.endswith("." + f)), None)
        logical = [module_name] if fused is None else \
            [module_name[: -len(fused)] + part for part, _, _ in fused_rows(spec, fused)]
        for leaf in _SCALES:
            scale = getattr(module, leaf, None)
            if not isinstance(scale, torch.Tensor):
                continue
            value = scale.detach().float()
            value = value.reshape(()) if value.numel() == 1 else value
            for name in logical:
                state[f"{name}.{leaf}"] = value
    return state


class TransformersCtLoader(TransformersLoader):
    name = "transformers-ct"
    version = (f"transformers {_dist_version('transformers')} + compressed-tensors "
               f"{_dist_version('compressed-tensors')}")
    # The transformers adapter's claims (its findings hold here too), plus serialized FP8.
    # fp8_online / fp8_quantize: compressed-tensors quantizes through llm-compressor's
    # observers and calibration, not at load; not claimed.
    capabilities = TransformersLoader.capabilities | {"fp8_serialized"}
    variants = {**TransformersLoader.variants,
                # compressed-tensors quantizes each Linear of the HF layout on its own
                # (apply_quantization_config targets "Linear"): split q/k/v keep their own
                # scales, a fused phi3 qkv_proj has the one scale of its checkpoint tensor;
                # nothing is requantized.
                "fp8_fused_scales": "per_slot",
                # initialize_qparams (quantization/lifecycle/initialize.py:260): the scale
                # parameter takes the observed weight's dtype, so a float32 checkpoint scale
                # is rounded to bfloat16 / float16 when it is loaded.
                "fp8_scale_storage": "weight"}

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        result = super().load(checkpoint, spec, options)
        if not spec.fp8_checkpoint:
            return result
        state = dict(result.state)
        state.update(_fp8_state(result.model, spec))
        return LoadResult(state=state, buffers=result.buffers, loaded=result.loaded,
                          missing=result.missing, unexpected=result.unexpected,
                          ignored=result.ignored, aliases=result.aliases, model=result.model)


loader = TransformersCtLoader()


def make_loader() -> TransformersCtLoader:
    return TransformersCtLoader()
