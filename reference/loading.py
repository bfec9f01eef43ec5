"""The reference loader: what loading a checkpoint into a tiny decoder *means*.

A load is planned completely before a byte of tensor data is read: every key is mapped
(exactly, by `names.checkpoint_keys`), every shape and dtype checked, coverage counted,
and every problem collected. The first problem by precedence is raised, naming the
others as acceptable alternatives. Only then is the model built and each tensor read
straight into its destination (the rank's slice of the logical matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from .checkpoint import Checkpoint, TensorEntry, open_checkpoint
from .contract import (CAPABILITIES, VARIANTS, CorruptCheckpointError, LoadError, LoadOptions,
                       LoadResult, MissingWeightsError, ModelSpec, ShapeMismatchError,
                       UnexpectedKeysError, UnsupportedDtypeError, torch_dtype)
from .dtypes import can_cast
from .model import TinyDecoderLM
from .names import TIED_HEAD_KEY, Slot, checkpoint_keys
from .tp import check_tp, rank_slice

__all__ = ["ReferenceLoader", "LoadPlan", "plan_load", "DEFAULT_VARIANTS"]

DEFAULT_VARIANTS: Mapping[str, str] = {name: values[0] for name, values in VARIANTS.items()}

# Which problem is raised first when a checkpoint has several (the rest become
# alternatives): the checkpoint's own validity, then what keys mean, then per-tensor
# checks, then what is missing.
_PRECEDENCE = ("corrupt_checkpoint", "unexpected", "shape_mismatch", "unsupported_dtype",
               "missing")


@dataclass(frozen=True)
class Copy:
    """Read rows [slot.start, slot.stop) of `entry` (narrowed to this rank) into `canonical`."""

    entry: TensorEntry
    slot: Slot


@dataclass
class LoadPlan:
    copies: list[Copy] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    problems: list[LoadError] = field(default_factory=list)

    def raise_first(self) -> None:
        if not self.problems:
            return
        ranked = sorted(self.problems, key=lambda e: (_PRECEDENCE.index(e.family), str(e)))
        first = ranked[0]
        first.alternatives = frozenset(e.family for e in ranked)
        raise first


def plan_load(spec: ModelSpec, entries: Mapping[str, TensorEntry], options: LoadOptions,
              variants: Mapping[str, str]) -> LoadPlan:
    """Map every key, check shapes and dtypes, count coverage; read nothing."""
    plan, table = LoadPlan(), checkpoint_keys(spec)
    shapes = spec.parameter_shapes()
    covered_by: dict[str, str] = {}
    for key in sorted(entries):
        entry, target = entries[key], table.get(key)
        if target is None:
            if key == TIED_HEAD_KEY and spec.tie_word_embeddings \
                    and variants["tied_checkpoint_head"] == "ignore":
                plan.ignored.add(key)
            else:
                plan.unexpected.add(key)
            continue
        if entry.shape != target.shape:
            plan.problems.append(ShapeMismatchError(
                f"{key}: expected shape {list(target.shape)}, checkpoint has {list(entry.shape)}",
                subject=key))
            continue
        param_dtype = spec.parameter_dtype(target.slots[0].canonical, options.dtype)
        if not can_cast(entry.dtype, param_dtype):
            plan.problems.append(UnsupportedDtypeError(
                f"{key}: checkpoint dtype {entry.dtype} cannot load into a {param_dtype} "
                f"parameter (only plain floats convert; int, bool and FP8 keep their dtype)",
                subject=key))
            continue
        for slot in target.slots:
            if slot.canonical in covered_by:
                plan.problems.append(CorruptCheckpointError(
                    f"{slot.canonical} is covered twice, by {covered_by[slot.canonical]} and "
                    f"{key}", subject=slot.canonical))
            covered_by[slot.canonical] = key
            plan.copies.append(Copy(entry, slot))
    plan.loaded = set(covered_by)
    plan.missing = set(shapes) - plan.loaded
    if plan.unexpected and (options.strict or variants["unexpected_keys"] == "raise"):
        names = sorted(plan.unexpected)
        plan.problems.append(UnexpectedKeysError(
            f"unexpected checkpoint keys: {', '.join(names)}", subject=names[0]))
    if plan.missing and options.track:
        names = sorted(plan.missing)
        plan.problems.append(MissingWeightsError(
            f"weights not initialized from the checkpoint: {', '.join(names)}", subject=names[0]))
    return plan


class ReferenceLoader:
    """The reference. `fused_params` picks the in-memory layout (vLLM-like fused q/k/v and
    gate/up, or transformers-like separate modules); the canonical result is the same."""

    name = "reference"
    capabilities = frozenset(CAPABILITIES) - {"fp8_online", "fp8_serialized", "reload",
                                              "offload", "cuda"} | (
        {"cuda"} if torch.cuda.is_available() else set())

    def __init__(self, variants: Mapping[str, str] | None = None, fused_params: bool = True):
        self.variants = {**DEFAULT_VARIANTS, **(variants or {})}
        self.fused_params = fused_params

    @property
    def version(self) -> str:
        from . import __version__
        return __version__

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        check_tp(spec, options.tp_size)
        dtype = torch_dtype(options.dtype or spec.dtype)
        with open_checkpoint(checkpoint) as ckpt:
            plan = plan_load(spec, ckpt.entries, options, self.variants)
            plan.raise_first()
            host = "cpu"
            build_on = "meta" if options.meta_init else host
            model = TinyDecoderLM(spec, dtype=dtype, device=build_on, tp_size=options.tp_size,
                                  tp_rank=options.tp_rank, fused=self.fused_params)
            model.materialize(host, poison=options.poison)
            views = model.canonical_views()
            for copy in plan.copies:
                self._copy(ckpt, copy, views[copy.slot.canonical], spec, options)
        model.move_to(options.device)
        state = model.canonical_views()
        return LoadResult(
            state=state, buffers=model.named_canonical_buffers(),
            loaded=frozenset(plan.loaded), missing=frozenset(plan.missing),
            unexpected=frozenset(plan.unexpected), ignored=frozenset(plan.ignored),
            aliases={"lm_head.weight": "model.embed_tokens.weight"}
            if spec.tie_word_embeddings else {},
            model=model)

    @staticmethod
    def _copy(ckpt: Checkpoint, copy: Copy, dest: torch.Tensor, spec: ModelSpec,
              options: LoadOptions) -> None:
        """Read one slot of one checkpoint tensor, narrowed to this rank, into `dest`."""
        slot, entry = copy.slot, copy.entry
        piece = rank_slice(spec, slot.canonical, options.tp_size, options.tp_rank)
        rows = (slot.start, slot.stop)
        if piece is not None and piece.dim == 0:
            rows = (slot.start + piece.start, slot.start + piece.stop)
        direct = (piece is None or piece.dim == 0) and entry.dtype == dest.dtype \
            and dest.is_contiguous()
        if direct:  # the common case: bytes go straight from the file into the parameter
            ckpt.read_into(entry, dest, rows if entry.shape else None)
            return
        source = ckpt.read(entry, rows if entry.shape else None)
        if piece is not None and piece.dim == 1:
            source = source[:, piece.start:piece.stop]
        dest.copy_(source)  # float -> float rounds to nearest even, as Tensor.to does
