"""Tensor-parallel findings: which rank holds which slice. A loader that ignores its rank
gives every rank the same slice; the gathered comparison then shows a wrong tensor, and
this says why, and which ranks are wrong."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from reference.contract import ModelSpec
from reference.tp import rank_slice
from reports.schema import Divergence, Mark
from .compare import Where, fused_slot

__all__ = ["same_slice_divergences", "gathered_where"]


def same_slice_divergences(spec: ModelSpec, found: Sequence[Mapping[str, torch.Tensor]],
                           expected: Sequence[Mapping[str, torch.Tensor]],
                           vocab_shards: str = "even") -> list[Divergence]:
    """One divergence per sliced tensor where some rank holds another rank's slice instead
    of its own (the reference's slices of those ranks differ)."""
    tp_size, out = len(found), []
    for name in expected[0]:
        if rank_slice(spec, name, tp_size, 0, vocab_shards) is None:
            continue
        held: dict[int, int] = {}  # wrong rank -> the rank whose slice it holds
        for rank in range(tp_size):
            mine = found[rank].get(name)
            if mine is None or torch.equal(mine, expected[rank][name]):
                continue
            source = next((other for other in range(tp_size) if other != rank
                           and expected[other][name].shape == mine.shape
                           and torch.equal(mine, expected[other][name])), None)
            if source is not None:
                held[rank] = source
        if not held:
            continue
        sources = set(held.values())
        if len(held) == tp_size - 1 and len(sources) == 1:
            (source,) = sources
            text = f"every TP rank holds the same slice (rank {source}'s of {tp_size})"
        else:
            by_source: dict[int, list[int]] = {}
            for rank, source in sorted(held.items()):
                by_source.setdefault(source, []).append(rank)
            text = "; ".join(
                f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} "
                f"hold{'' if len(ranks) > 1 else 's'} rank {source}'s slice"
                for source, ranks in sorted(by_source.items()))
        wrong = sorted(held)
        slot = fused_slot(name)
        headline = f"{name}: {text}"
        message = (f"{headline}\n    wrong ranks: {wrong}; each rank must hold its own slice"
                   + (f"\n    {slot.text()}" if slot else ""))
        out.append(Divergence("tensor", name, message, {"ranks": wrong, "held": {str(r): s for r, s in held.items()}},
                              finding="same_slice", headline=headline, tensor=name, slot=slot,
                              dtype=str(expected[0][name].dtype),
                              expected="each rank its own slice",
                              found=", ".join(f"rank {r}: rank {s}'s" for r, s in
                                              sorted(held.items()))))
    return out


def gathered_where(spec: ModelSpec, name: str, tp_size: int, vocab_shards: str = "even") -> Where:
    """Where a tensor gathered over the ranks was cut: one mark per rank boundary, on the
    rows (dim 0) or columns (dim 1) of its mismatch map."""
    marks = []
    dim = None
    for rank in range(1, tp_size):
        piece = rank_slice(spec, name, tp_size, rank, vocab_shards)
        if piece is None:
            break
        dim = piece.dim
        # a replicated slice (kv heads shared by ranks) starts where another did: no new edge
        if piece.start > 0 and all(m.at != piece.start for m in marks):
            marks.append(Mark(piece.start, f"rank {rank}"))
    note = f"gathered over {tp_size} ranks"
    return Where(note=note, row_marks=marks if dim == 0 else [],
                 col_marks=marks if dim == 1 else [])
