"""Tensor-parallel partitioning of canonical parameters (simulated ranks).

Column-parallel weights (q, k, v, gate, up, and the vocab rows of embed_tokens and
lm_head) are sliced on dim 0, their biases too; row-parallel weights (o, down) on dim 1,
their biases not at all; norms and everything else are replicated. When tp_size exceeds
the kv heads, kv heads are replicated and rank r holds kv head r // (tp_size / KV).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .contract import ModelSpec, UnsupportedLayoutError, parameter_table

__all__ = ["RankSlice", "rank_slice", "check_tp", "rank_shapes", "gather_ranks"]

_COLUMN = ("q_proj", "gate_proj", "up_proj")
_KV = ("k_proj", "v_proj")
_ROW = ("o_proj", "down_proj")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class RankSlice:
    """Elements [start, stop) of dimension `dim` belong to the rank."""

    dim: int
    start: int
    stop: int


def check_tp(spec: ModelSpec, tp_size: int, vocab_shards: str = "even") -> None:
    """Refuse a tp_size the spec cannot be split by, naming the dimension. Under
    `vocab_shards=padded64` any vocabulary splits (the padding absorbs the remainder)."""
    problems = []
    if tp_size not in (1, 2, 4, 8):
        problems.append(f"tp_size={tp_size} is not a power of two up to 8")
    dims = [("num_heads", spec.num_heads), ("intermediate_size", spec.intermediate_size)]
    if vocab_shards == "even":
        dims.append(("vocab_size", spec.vocab_size))
    for what, value in dims:
        if value % tp_size:
            problems.append(f"{what}={value} is not divisible by tp_size={tp_size}")
    kv = spec.num_kv_heads
    if (tp_size <= kv and kv % tp_size) or (tp_size > kv and tp_size % kv):
        problems.append(f"num_kv_heads={kv} and tp_size={tp_size}: neither divides the other")
    if problems:
        raise UnsupportedLayoutError("; ".join(problems), subject=f"tp_size={tp_size}")


def _module(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else ""


def rank_slice(spec: ModelSpec, name: str, tp_size: int, rank: int,
               vocab_shards: str = "even", block: tuple[int, int] | None = None
               ) -> RankSlice | None:
    """The part of canonical parameter `name` that rank `rank` holds (None: all of it);
    `vocab_shards` is the contract variant of that name. A block scale grid
    (`..._scale_inv`) is sliced with its weight, in blocks of `block` (default: the spec's
    `quant.block`; an online block quantization passes its own)."""
    if tp_size == 1:
        return None
    quantized = _quantized_tensor(spec, name)
    if quantized is not None:  # a format's stored weight or scale grid: the format says
        weight, tensor = quantized
        from .quant import format_of  # the formats import this module
        return format_of(spec.quant).stored_slice(
            spec.quant, _logical_slice(spec, weight, tp_size, rank, vocab_shards), tensor)
    if name.endswith("_scale_inv"):  # the scale rows / columns of the rank's weight blocks
        block = block or (spec.quant.block if spec.quant is not None else None)
        piece = rank_slice(spec, name[: -len("_scale_inv")], tp_size, rank, vocab_shards)
        if piece is None or block is None:
            return None
        size = block[piece.dim]
        return RankSlice(piece.dim, piece.start // size, -(-piece.stop // size))
    return _logical_slice(spec, name, tp_size, rank, vocab_shards)


def _logical_slice(spec: ModelSpec, name: str, tp_size: int, rank: int, vocab_shards: str
                   ) -> RankSlice | None:
    """The rank's part of an unquantized parameter, or of a quantized weight's logical
    [N, K] matrix."""
    module, is_weight = _module(name), name.endswith(".weight")
    if name in _VOCAB and vocab_shards == "padded64":
        per = -(-spec.vocab_size // 64) * 64 // tp_size
        return RankSlice(0, min(spec.vocab_size, rank * per),
                         min(spec.vocab_size, (rank + 1) * per))
    if name in _VOCAB:
        per = spec.vocab_size // tp_size
        return RankSlice(0, rank * per, (rank + 1) * per)
    if not name.startswith("model.layers.") or name.endswith("_scale"):
        return None  # scalar FP8 scales are replicated
    if module in _COLUMN:
        full = spec.q_size if module == "q_proj" else spec.intermediate_size
        per = full // tp_size
        return RankSlice(0, rank * per, (rank + 1) * per)
    if module in _KV:
        d, kv = spec.head_dim, spec.num_kv_heads
        if tp_size <= kv:
            per = kv // tp_size * d
            return RankSlice(0, rank * per, (rank + 1) * per)
        head = rank // (tp_size // kv)
        return RankSlice(0, head * d, (head + 1) * d)
    if module in _ROW and is_weight:
        full = spec.q_size if module == "o_proj" else spec.intermediate_size
        per = full // tp_size
        return RankSlice(1, rank * per, (rank + 1) * per)
    return None


def _quantized_tensor(spec: ModelSpec, name: str) -> tuple[str, str] | None:
    """(its weight, "weight" or "scale") for a stored weight or scale grid of the spec's
    serialized format (`spec.quant`); None for anything else."""
    if spec.quant is None or not name.startswith("model.layers."):
        return None
    info = parameter_table(spec).get(name)
    if info is None or info.module is None:
        return None
    if info.role == "block_scale":
        return info.of, "scale"
    return (name, "weight") if info.role == "linear_weight" and info.quant else None


def rank_shapes(spec: ModelSpec, tp_size: int, rank: int, vocab_shards: str = "even"
                ) -> dict[str, tuple[int, ...]]:
    """Canonical name -> the shape rank `rank` holds."""
    shapes = {}
    for name, shape in spec.parameter_shapes().items():
        piece = rank_slice(spec, name, tp_size, rank, vocab_shards)
        if piece is not None:
            shape = shape[:piece.dim] + (piece.stop - piece.start,) + shape[piece.dim + 1:]
        shapes[name] = shape
    return shapes


def gather_ranks(spec: ModelSpec, states: Sequence[Mapping[str, torch.Tensor]],
                 vocab_shards: str = "even", block: tuple[int, int] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Reassemble the tp_size=1 state from every rank's state (in rank order), each rank
    split under the `vocab_shards` variant (block scale grids in blocks of `block`)."""
    tp_size = len(states)
    full = {}
    for name in states[0]:
        first = rank_slice(spec, name, tp_size, 0, vocab_shards, block)
        if first is None:
            full[name] = states[0][name]
            continue
        seen, pieces = set(), []
        for rank, state in enumerate(states):
            piece = rank_slice(spec, name, tp_size, rank, vocab_shards, block)
            if (piece.start, piece.stop) not in seen:  # replicated kv heads: keep one copy
                seen.add((piece.start, piece.stop))
                pieces.append(state[name])
        full[name] = torch.cat(pieces, dim=first.dim)
    return full
