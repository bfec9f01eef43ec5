"""Per-format comparison of quantized matrices, registered by each format's module.

Each format in `reference.quant.FORMATS` has a module `conformance/<format>_compare.py`
that registers a *refiner* with `@register("<format>")`: given the divergences of one
comparison, it replaces those on its quantized matrices by one readable divergence per
matrix (its slot, its scales, its block) and declines (returns them unchanged) where its
format is not in play. The harness calls `refine_quantized` and knows no format.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping

import torch

from reference.contract import LoadOptions, ModelSpec
from reference.quant import FORMATS
from .compare import Divergence

__all__ = ["Refiner", "register", "refine_quantized"]

Refiner = Callable[[list[Divergence], Mapping[str, torch.Tensor], Mapping[str, torch.Tensor],
                    ModelSpec, "LoadOptions | None"], list[Divergence]]
_REFINERS: dict[str, Refiner] = {}


def register(format_name: str) -> Callable[[Refiner], Refiner]:
    """Decorator: `refiner` compares the matrices of `format_name`."""
    def add(refiner: Refiner) -> Refiner:
        _REFINERS[format_name] = refiner
        return refiner
    return add


def _refiners() -> list[Refiner]:
    for name in FORMATS:  # each format's comparison module registers itself on import
        if name not in _REFINERS:
            importlib.import_module(f"{__package__}.{name}_compare")
    return [_REFINERS[name] for name in FORMATS]


def refine_quantized(divergences: list[Divergence],
                     expected: Mapping[str, torch.Tensor] | None,
                     found: Mapping[str, torch.Tensor] | None, spec: ModelSpec,
                     options: LoadOptions | None = None) -> list[Divergence]:
    """Every registered format's refiner in turn (each declines what is not its own)."""
    if expected is None or found is None:
        return divergences
    for refiner in _refiners():
        divergences = refiner(divergences, expected, found, spec, options)
    return divergences
