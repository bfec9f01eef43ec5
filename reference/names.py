"""Name mapping: checkpoint keys to canonical parameters, exact per dotted component.

Every key a checkpoint of a spec may hold, in either layout, is listed in one table and
looked up by whole-string equality, so `qq_proj` never matches `q_proj`, `layers.03`
never matches `layers.3`, and one key feeds exactly the (parameter, rows) it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

import torch

from .contract import FUSED_PROJECTIONS, ModelSpec

__all__ = ["FUSED_PROJECTIONS", "TIED_HEAD_KEY", "Slot", "KeyTarget", "checkpoint_keys",
           "layout_keys", "fused_qkv_rows", "fused_gate_up_rows", "to_checkpoint_tensors"]

# FUSED_PROJECTIONS (fused module -> its logical modules, in row order) lives in
# reference.contract, beside the parameter table; it is re-exported here.
TIED_HEAD_KEY = "lm_head.weight"


@dataclass(frozen=True)
class Slot:
    """Rows [start, stop) of a checkpoint tensor feed the canonical parameter `canonical`."""

    canonical: str
    start: int
    stop: int


@dataclass(frozen=True)
class KeyTarget:
    shape: tuple[int, ...]
    slots: tuple[Slot, ...]


def fused_qkv_rows(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """Row ranges of q, k and v in a fused qkv weight: [0, H·d), [H·d, (H+KV)·d), then v."""
    q, kv = spec.q_size, spec.kv_size
    return {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}


def fused_gate_up_rows(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """Row ranges of gate and up in a fused gate_up weight: [0, I), [I, 2I)."""
    i = spec.intermediate_size
    return {"gate_proj": (0, i), "up_proj": (i, 2 * i)}


@lru_cache(maxsize=256)  # a spec is frozen; every load and plan asks for its table
def checkpoint_keys(spec: ModelSpec) -> Mapping[str, KeyTarget]:
    """Every key a checkpoint of `spec` may hold, split or fused, and what it feeds
    (read-only: the table is shared)."""
    shapes = spec.parameter_shapes()
    table = {name: KeyTarget(shape, (Slot(name, 0, shape[0] if shape else 1),))
             for name, shape in shapes.items()}
    for layer in range(spec.num_layers):
        for fused, parts in FUSED_PROJECTIONS.items():
            for suffix in ("weight", "bias", "weight_scale", "input_scale", "weight_scale_inv"):
                names = [f"model.layers.{layer}.{part}.{suffix}" for part in parts]
                if not all(n in shapes for n in names):
                    continue
                if not shapes[names[0]]:
                    # A fused-on-disk matrix has one scale: it fills every slot (seed 003).
                    table[f"model.layers.{layer}.{fused}.{suffix}"] = KeyTarget(
                        (), tuple(Slot(n, 0, 1) for n in names))
                    continue
                slots, row = [], 0
                for n in names:
                    slots.append(Slot(n, row, row + shapes[n][0]))
                    row += shapes[n][0]
                table[f"model.layers.{layer}.{fused}.{suffix}"] = KeyTarget(
                    (row,) + shapes[names[0]][1:], tuple(slots))
    return MappingProxyType(table)


@lru_cache(maxsize=256)
def layout_keys(spec: ModelSpec, fused: bool) -> Mapping[str, KeyTarget]:
    """The keys of a complete checkpoint in one layout (fused or split q/k/v, gate/up)."""
    table = checkpoint_keys(spec)
    parts = {f".{p}." for ps in FUSED_PROJECTIONS.values() for p in ps}
    fused_names = {f".{f}." for f in FUSED_PROJECTIONS}
    drop = parts if fused else fused_names
    return MappingProxyType({k: t for k, t in table.items() if not any(d in k for d in drop)})


def to_checkpoint_tensors(spec: ModelSpec, canonical: Mapping[str, torch.Tensor], fused: bool
                          ) -> dict[str, torch.Tensor]:
    """Canonical tensors -> the checkpoint tensors of a layout (fusing rows by the table)."""
    out = {}
    for key, target in layout_keys(spec, fused).items():
        if len(target.slots) == 1 or not target.shape:  # one scalar scale for every slot
            out[key] = canonical[target.slots[0].canonical]
        else:
            out[key] = torch.cat([canonical[s.canonical] for s in target.slots], dim=0)
    return out
