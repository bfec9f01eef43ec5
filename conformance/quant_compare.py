"""Per-format comparison of quantized matrices, registered by each format's module.

Each format in `reference.quant.FORMATS` has a module `conformance/<format>_compare.py`
that registers a *refiner* with `@register("<format>")`: given the divergences of one
comparison, it replaces those on its quantized matrices by one readable divergence per
matrix (its slot, its scales, its block) and declines (returns them unchanged) where its
format is not in play. The harness calls `refine_quantized` and knows no format.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Callable, Mapping, NamedTuple

import torch

from reference.contract import LoadOptions, ModelSpec
from reference.quant import FORMATS
from reports.schema import Counts, Diffs, Slot
from .compare import Divergence, compare_tensor, fused_slot

__all__ = ["Refiner", "register", "refine_quantized", "tensor_problems", "MatrixTensors",
           "matrix_tensors", "matrix_divergence"]

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


def tensor_problems(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                    names: tuple[str, ...]) -> dict[str, Divergence]:
    """name -> the divergence of each of a quantized matrix's tensors (its codes, its
    scales) that differs or is absent from `found`."""
    return {n: d for n in names if n in expected
            for d in [compare_tensor(n, expected[n], found[n]) if n in found else
                      Divergence("absent", n, f"{n}: absent", finding="missing")]
            if d is not None}


class MatrixTensors(NamedTuple):
    """One quantized matrix as a format's comparer starts from it."""
    problems: dict[str, Divergence]   # its tensors' divergences (tensor_problems)
    slot: Slot | None                 # its slot in a fused parameter
    matrix: str                       # the module's name
    named: str                        # the module's name with its slot, for headlines
    codes_d: Divergence | None
    scale_d: Divergence | None
    tensors: tuple                    # expected codes, found codes, expected scales, found scales


def matrix_tensors(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                   weight: str, scale: str) -> MatrixTensors | None:
    """`weight`'s codes and `scale`'s scales on both sides, or None if both are equal."""
    problems = tensor_problems(expected, found, (weight, scale))
    if not problems:
        return None
    slot = fused_slot(weight)
    matrix = weight[: -len(".weight")]
    return MatrixTensors(problems, slot, matrix,
                         f"{matrix}{' (' + slot.text() + ')' if slot else ''}",
                         problems.get(weight), problems.get(scale),
                         (expected.get(weight), found.get(weight), expected.get(scale),
                          found.get(scale)))


def matrix_divergence(weight: str, named: str, slot: Slot | None,
                      problems: Mapping[str, Divergence], codes_d: Divergence | None,
                      scale_d: Divergence | None, scale_label: str, detail: dict,
                      block: tuple[str, str, float] | None, codes: torch.Tensor | None
                      ) -> Divergence:
    """The one divergence of a quantized matrix, from its tensors' divergences (`problems`:
    the codes' `codes_d`, the scales' `scale_d`). `block` is (headline, finding, dequantized
    error) when the format could name the first differing block; otherwise the headline
    is the first tensor divergence's, under the matrix's name. The card names the weight
    (`codes`): its dtype, shape and code counts, not the scales'."""
    if block is None:
        first = codes_d if codes_d is not None and codes_d.finding != "unwritten" or \
            scale_d is None else scale_d
        finding = first.finding
        which = "codes" if first is codes_d else scale_label
        headline = f"{named}: {which} {first.headline.split(': ', 1)[-1]}"
    else:
        headline, finding, _ = block
    lines = ["    " + d.message.split("\n")[0] for d in (codes_d, scale_d) if d is not None]
    lead = codes_d or scale_d
    diffs = codes_d.diffs if codes_d is not None and codes_d.diffs else Diffs()
    dtype, shape, counts = lead.dtype, lead.shape, lead.counts
    if block is not None:
        diffs = replace(diffs, dequantized_max_abs=block[2])
        dtype, shape = str(codes.dtype), list(codes.shape)
        counts = codes_d.counts if codes_d is not None else Counts(0, codes.numel())
    return Divergence("fp8" if all(d.kind == "tensor" for d in problems.values())
                      else lead.kind, weight, "\n".join([headline] + lines), detail,
                      finding=finding, headline=headline, tensor=weight, slot=slot,
                      dtype=dtype, shape=shape, counts=counts, diffs=diffs,
                      source=lead.source, tp=lead.tp)
