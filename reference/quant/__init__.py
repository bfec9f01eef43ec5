"""Quantization formats as plug-ins: one module per format, each a :class:`QuantFormat`.

A format says what a quantized linear *is*: the tensors beside its codes and their shapes,
the `config.json` `quantization_config` real loaders read, quantize / dequantize, how TP
slicing acts on its scales, and the layouts it refuses. The loader, the checkpoint
generators and the comparisons ask the format (`FORMATS[name]`), never the name.

- `fp8` (fp8_tensor.py): per-tensor (or per-row) FP8 with a `weight_scale`; a spec names
  it through its original fields `fp8_checkpoint` / `fp8_input_scale` (kept: every
  adapter reads them), online through `LoadOptions(quantize="fp8")`.
- `fp8_block` (fp8_block.py): block-wise FP8 with a float32 `weight_scale_inv` per
  [bn, bk] block; a spec names it with `quant=QuantSpec("fp8_block", (bn, bk))`, online
  through `LoadOptions(quantize="fp8_block", quant_block=(bn, bk))`.
- `mxfp4` (mxfp4.py): OCP MXFP4, E2M1 codes packed two per byte (uint8) with a uint8 E8M0
  `weight_scale` per 32 input elements; a spec names it with `quant=QuantSpec("mxfp4")`.

Nothing here knows about Hypothesis or pytest.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch

from ..contract import ModelSpec, QuantSpec
from ..tp import RankSlice

__all__ = ["QuantFormat", "FORMATS", "format_of"]


class QuantFormat(Protocol):
    """What a quantization format provides (torch.testing's Pair, for loading: each
    format plugs in; the rest of the reference asks it)."""

    name: str
    scale_suffix: str        # `<linear>.weight` + this names the dequantization multiplier
    capabilities: tuple[str, ...]   # contract.CAPABILITIES a loader claims for it

    def tensor_shapes(self, quant: QuantSpec, weight: str, shape: tuple[int, int]
                      ) -> dict[str, tuple[int, ...]]:
        """The canonical tensors beside quantized `weight` (of `shape`) and their shapes."""

    def quantization_config(self, quant: QuantSpec) -> dict[str, Any]:
        """The `quantization_config` of a serialized checkpoint, as real loaders read it."""

    def dequantize(self, quant: QuantSpec, codes: torch.Tensor, scale: torch.Tensor
                   ) -> torch.Tensor:
        """The float32 matrix that codes and scale stand for."""

    def check_layout(self, quant: QuantSpec, spec: ModelSpec, tp_size: int,
                     variants: Mapping[str, str]) -> None:
        """Raise UnsupportedLayoutError for a layout the format (as declared) refuses."""

    # ----- what a format that `ModelSpec.quant` names (QUANT_FORMATS) also says ----------
    weight_dtype: torch.dtype    # the stored weight: FP8 codes, or packed uint8 (MXFP4)
    scale_dtype: torch.dtype     # its scales: float32, or E8M0 bytes (MXFP4)
    fixed_block: tuple[int, int] | None  # a block the format fixes ([1, 32] for MXFP4)

    def stored_weight_shape(self, quant: QuantSpec, shape: tuple[int, int]
                            ) -> tuple[int, int]:
        """The shape the codes of a logical [N, K] weight are stored in ([N, K/2] packed)."""

    def stored_slice(self, quant: QuantSpec, piece: "RankSlice | None", tensor: str
                     ) -> "RankSlice | None":
        """A TP rank's piece of the stored weight (`tensor="weight"`) or of its scales
        (`"scale"`), given its piece of the logical matrix."""


def _formats() -> dict[str, QuantFormat]:
    from .fp8_block import BLOCK_FP8
    from .fp8_tensor import TENSOR_FP8
    from .mxfp4 import MXFP4
    return {f.name: f for f in (TENSOR_FP8, BLOCK_FP8, MXFP4)}


FORMATS: Mapping[str, QuantFormat] = _formats()


def format_of(quant: QuantSpec) -> QuantFormat:
    return FORMATS[quant.format]
