"""transformers' fine-grained FP8 (`--loader transformers-fp8-block`):
`AutoModelForCausalLM.from_pretrained` on serialized block-wise FP8 checkpoints
(`quant_method: fp8` with `weight_block_size`, DeepSeek-V3 / Qwen3-FP8 style).

What runs is transformers' own path, unchanged (the transformers adapter's `load`). Without
a GPU, `FineGrainedFP8HfQuantizer.validate_environment` sets `dequantize=True` for a
pre-quantized checkpoint ("we will default to dequantizing the model to bf16 since no GPU
or XPU is available"); `replace_with_fp8_linear` then leaves every `nn.Linear` as it is,
and the `Fp8Dequantize` conversion op folds each `weight` with its `weight_scale_inv` into
`(codes.float() * scale).to(<the parameter's dtype>)` while loading. So on CPU the model
holds dequantized weights and no scales: the contract's variant `fp8_block_storage:
dequantized`. Online quantization (`FineGrainedFP8Config` on a float checkpoint) raises
"No GPU or XPU found" on CPU: `fp8_block_online` is not claimed.

Translation: none beyond the transformers adapter's (the state is what the model holds).
Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

from .transformers import TransformersLoader

__all__ = ["TransformersFp8BlockLoader", "loader", "make_loader"]


class TransformersFp8BlockLoader(TransformersLoader):
    name = "transformers-fp8-block"
    version = f"{TransformersLoader.version} (FineGrainedFP8, dequantize=True on CPU)"
    # The transformers adapter's claims (its findings hold here too), plus serialized
    # block FP8. fp8_block_online: FineGrainedFP8HfQuantizer raises "No GPU or XPU found.
    # A GPU or XPU is needed for FP8 quantization." on a float checkpoint without a GPU.
    capabilities = TransformersLoader.capabilities | {"fp8_block_serialized"}
    variants = {**TransformersLoader.variants,
                # q/k/v and gate/up stay separate nn.Linear modules (llama, qwen2); phi3's
                # fused qkv_proj is one module whose weight is dequantized with its grid.
                "fp8_block_fusion": "per_module",
                # dequantize=True without a GPU: codes * scale in float32, rounded once to
                # the parameter's dtype (Fp8Dequantize._dequantize_one), no scale kept.
                "fp8_block_storage": "dequantized"}


loader = TransformersFp8BlockLoader()


def make_loader() -> TransformersFp8BlockLoader:
    return TransformersFp8BlockLoader()
