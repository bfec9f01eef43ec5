"""Two outcomes of a load -> the divergences between them, each with a readable message.

Tensors are compared bit for bit (NaN-aware: bits, not values), after dtype and shape;
name sets exactly; errors by family (a candidate may raise any family the reference
lists as an alternative), then by what the error names (conformance/error_subjects.py).
"One raised, the other did not" is a divergence like any wrong number.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from reference.contract import LoadError, LoadResult
from reference.names import FUSED_PROJECTIONS
from reports.schema import SEVERITIES, Divergence, Mark, Slot, Source, TPSlice, worst
from .tensor_diff import diff_tensors

__all__ = ["Outcome", "Divergence", "SEVERITIES", "Where", "run_outcome", "compare_outcomes",
           "compare_tensor", "compare_states", "fused_slot", "worst"]


@dataclass
class Outcome:
    """What one loader did with one case: a result, or the exception it raised."""

    result: LoadResult | None = None
    error: BaseException | None = None
    # what the call did besides its result (conformance.guard): reported with it
    side_effects: list["Divergence"] = field(default_factory=list)

    @property
    def family(self) -> str:
        """'ok', an error family, or what went wrong outside the family: 'hang' (no answer
        in time), 'crash' (the process died) or 'exception' (anything else raised)."""
        from .survival import CandidateCrashed, CandidateHung
        if self.error is None:
            return "ok"
        if isinstance(self.error, LoadError):
            return self.error.family
        return {CandidateHung: "hang", CandidateCrashed: "crash"}.get(type(self.error),
                                                                       "exception")

    def describe(self) -> str:
        if self.error is None:
            return "loaded"
        if isinstance(self.error, LoadError):
            return f"{type(self.error).__name__} [{self.error.family}]: {self.error}"
        # a CandidateCrashed made of the candidate's own BaseException points at the candidate
        frame = traceback.extract_tb((self.error.__cause__ or self.error).__traceback__)[-1:]
        where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
        return f"{type(self.error).__name__} (not a loadcheck error){where}: {self.error}"


def run_outcome(load: Callable[[], LoadResult]) -> Outcome:
    try:
        return Outcome(result=load())
    except Exception as exc:  # a candidate may raise anything; that is the point
        return Outcome(error=exc)


_REFUSALS = frozenset({"unsafe_checkpoint", "corrupt_checkpoint"})


@dataclass
class Where:
    """Where a canonical tensor comes from and sits: the checkpoint key (and rows, and
    shard), the tensor-parallel slice, a free note ("gathered over 4 ranks"), and the
    boundaries to draw on its mismatch map."""
    source: Source | None = None
    tp: TPSlice | None = None
    note: str = ""
    row_marks: list[Mark] = field(default_factory=list)
    col_marks: list[Mark] = field(default_factory=list)
    slot_rows: list[int] | None = None  # [start, stop) of its rows in the fused parameter

    def text(self) -> str:
        return "; ".join(p for p in (self.note, self.source and self.source.text(),
                                     self.tp and self.tp.text()) if p)


def _where(where: "str | Where") -> Where:
    return where if isinstance(where, Where) else Where(note=where)


def fused_slot(name: str) -> Slot | None:
    """`model.layers.0.self_attn.k_proj.weight` -> slot 1 (k_proj) of
    model.layers.0.self_attn.qkv_proj, where a fused-in-memory loader keeps it."""
    for fused, parts in FUSED_PROJECTIONS.items():
        for index, part in enumerate(parts):
            marker = f".{part}."
            if marker in name:
                prefix = name[: name.index(marker)]
                return Slot(index, part.split(".")[1], f"{prefix}.{fused}")
    return None


def _diverged(kind: str, name: str, finding: str, headline: str, lines: list[str],
              where: Where, **fields) -> Divergence:
    """A divergence about the canonical tensor `name`, its message the headline, then the
    detail lines, then where it comes from."""
    slot = fused_slot(name)
    if slot is not None and where.slot_rows is not None:
        slot.rows = list(where.slot_rows)
    place = "; ".join(p for p in (slot and slot.text(), where.text()) if p)
    message = "\n".join([headline] + [f"    {line}" for line in lines]
                         + ([f"    {place}"] if place else []))
    return Divergence(kind, name, message, finding=finding, headline=headline, tensor=name,
                      slot=slot, source=where.source, tp=where.tp, **fields)


def compare_tensor(name: str, expected: torch.Tensor, found: torch.Tensor,
                   where: "str | Where" = "", values: bool = True) -> Divergence | None:
    """None when `found` equals `expected` bit for bit (with dtype and shape; only those
    two when `values` is false)."""
    where = _where(where)
    if found.dtype != expected.dtype:
        return _diverged("dtype", name, "dtype", f"{name}: dtype {found.dtype}, expected "
                         f"{expected.dtype}", [], where, dtype=str(expected.dtype),
                         expected=str(expected.dtype), found=str(found.dtype))
    if tuple(found.shape) != tuple(expected.shape):
        return _diverged("shape", name, "shape", f"{name}: shape {list(found.shape)}, "
                         f"expected {list(expected.shape)}", [], where,
                         dtype=str(expected.dtype), shape=list(expected.shape),
                         expected=str(list(expected.shape)), found=str(list(found.shape)))
    if not values:
        return None
    if found.is_meta:
        return _diverged("placement", name, "meta", f"{name}: still on the meta device "
                         f"(never materialised)", [], where, dtype=str(expected.dtype),
                         shape=list(expected.shape), expected="materialised", found="meta")
    diff = diff_tensors(expected, found)
    if diff is None:
        return None
    count, numel = diff.count, expected.numel()
    rows = f" (rows {diff.rows[0]}:{diff.rows[1]} of {expected.shape[0]})" if diff.rows else ""
    if diff.poisoned:
        finding = "unwritten"
        headline = (f"{name}: never written: {diff.poisoned} of {numel} elements still hold "
                    f"the poison pattern{rows}")
        if diff.poisoned < count:
            headline += f"; {count - diff.poisoned} more differ"
    elif diff.non_finite:
        finding = "non_finite"
        headline = (f"{name}: {diff.non_finite} of {numel} elements are NaN or inf where the "
                    f"reference is finite{rows}")
    elif diff.rounding:
        finding = "rounding"
        headline = f"{name}: rounding: {count} of {numel} elements are 1 ULP apart{rows}"
    else:
        finding = "values"
        headline = f"{name}: {count} of {numel} elements differ{rows}"
        if diff.diffs.max_abs is not None:
            headline += f"; max abs diff {diff.diffs.max_abs:.3g}"
        if diff.diffs.max_ulp is not None:
            headline += f", {diff.diffs.max_ulp:,} ULP"
    lines = [f"first at {diff.first_index}: expected {diff.expected_value}, found "
             f"{diff.found_value} ({expected.dtype})"]
    detail = {"expected_value": diff.expected_value, "found_value": diff.found_value}
    return _diverged("tensor", name, finding, headline, lines, where, detail=detail,
                     dtype=str(expected.dtype), shape=list(expected.shape),
                     counts=diff.counts(), diffs=diff.diffs, rows=diff.rows,
                     first_index=diff.first_index, expected=diff.expected_value,
                     found=diff.found_value,
                     map=diff.mismatch_map(where.row_marks, where.col_marks))


def compare_states(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                   skip_values: frozenset[str] = frozenset(),
                   where: Callable[[str], "str | Where"] = lambda name: "",
                   kind: str = "tensor") -> list[Divergence]:
    """Every name of `expected` must be in `found` with equal bits (values of names in
    `skip_values` are unspecified: only dtype and shape are checked); no extra names.
    `kind` names what the values are ("buffer" for non-persistent buffers)."""
    out = []
    for name in expected:
        if name not in found:
            out.append(_diverged("absent", name, "missing", f"{name}: absent from the "
                                 f"candidate's result", [], _where(where(name)),
                                 expected="present", found="absent"))
            continue
        div = compare_tensor(name, expected[name], found[name], where(name),
                             values=name not in skip_values)
        if div is not None:
            if kind != "tensor" and div.kind == "tensor":
                div.kind = kind
            out.append(div)
    for name in sorted(set(found) - set(expected)):
        out.append(Divergence("absent", name, f"{name}: in the candidate's result but not "
                              f"a parameter of this model", finding="extra", tensor=name,
                              expected="absent", found="present"))
    return out


def _name_sets(expected: LoadResult, found: LoadResult, which: tuple[str, ...]
               ) -> list[Divergence]:
    out = []
    for attr in which:
        exp, got = set(getattr(expected, attr)), set(getattr(found, attr))
        if exp != got:
            lacking, extra = sorted(exp - got), sorted(got - exp)
            parts = ([f"does not report {lacking}"] if lacking else []) + (
                [f"wrongly reports {extra}"] if extra else [])
            out.append(Divergence("names", attr, f"{attr} names: candidate " + " and ".join(parts),
                                  {"expected": sorted(exp), "found": sorted(got),
                                   "lacking": lacking, "extra": extra}, finding="names",
                                  expected=f"{len(exp)} names", found=f"{len(got)} names"))
    return out


def compare_outcomes(expected: Outcome, found: Outcome, *, name_sets: tuple[str, ...],
                     device: str, where: Callable[[str], str] = lambda name: "",
                     any_refusal: bool = False) -> list[Divergence]:
    """All divergences between the reference's outcome and the candidate's (its side
    effects first). With `any_refusal` (hostile input), any error of the family counts as
    refusing it."""
    return list(found.side_effects) + _compare_outcomes(
        expected, found, name_sets=name_sets, device=device, where=where,
        any_refusal=any_refusal)


def _compare_outcomes(expected: Outcome, found: Outcome, *, name_sets: tuple[str, ...],
                      device: str, where: Callable[[str], str],
                      any_refusal: bool) -> list[Divergence]:
    if expected.error is not None or found.error is not None:
        if isinstance(expected.error, LoadError) and isinstance(found.error, LoadError) \
                and (any_refusal or found.error.family in expected.error.alternatives):
            from .error_subjects import subject_divergences  # imports this module
            return [] if any_refusal else subject_divergences(expected.error, found.error)
        return [error_divergence(expected, found)]
    exp, got = expected.result, found.result
    out = _name_sets(exp, got, name_sets)
    out += compare_states(exp.state, got.state, skip_values=exp.missing, where=where)
    if got.buffers:
        out += compare_states(exp.buffers, got.buffers, where=lambda n: "a non-persistent "
                              "buffer: it must equal what the constructor computes")
    if dict(exp.aliases) != dict(got.aliases):
        out.append(Divergence("alias", "aliases", f"storage sharing: expected {dict(exp.aliases)}"
                              f" (tied head is the embedding), found {dict(got.aliases)}",
                              {"expected": dict(exp.aliases), "found": dict(got.aliases)},
                              expected=str(dict(exp.aliases)), found=str(dict(got.aliases))))
    want = torch.device(device).type
    for name, place in sorted(got.placement.items()):
        if torch.device(place).type != want:
            out.append(Divergence("placement", name, f"{name}: storage on {place}, expected "
                                  f"{device}", {"expected": device, "found": place},
                                  tensor=name, expected=device, found=str(place)))
    return out


def error_divergence(expected: Outcome, found: Outcome) -> Divergence:
    """One side raised and the other did not, or the families differ. A candidate that
    loads what the reference refuses as unsafe or corrupt is critical; a process that died
    or hung is a crash or a hang; an exception outside the error families is a crash too
    (the loader did not handle it)."""
    subject = getattr(expected.error, "subject", None) or getattr(
        found.error, "subject", None) or "load"
    families = {"expected_family": expected.family, "found_family": found.family}
    detail = {"expected": expected.describe(), "found": found.describe(), **families}
    kind, severity = "error", "divergence"
    if found.family in ("hang", "crash"):
        kind = severity = found.family
        finding = found.family
        text = f"{found.describe()}"
        if expected.error is not None:
            text += f" (the reference raised {expected.describe()})"
    elif found.error is None:
        finding = "accepted"
        severity = "critical" if expected.family in _REFUSALS else "divergence"
        text = f"candidate loaded a checkpoint the reference refuses: {expected.describe()}"
    elif found.family == "exception":
        finding, severity = "exception", "crash"
        text = (f"candidate raised {found.describe()}" + (
            f"; the reference raised {expected.describe()}" if expected.error is not None
            else " where the reference loads"))
    elif expected.error is None:
        finding = "refused"
        text = f"candidate raised where the reference loads: {found.describe()}"
    else:
        finding = "error_family"
        text = (f"errors differ: reference raised {expected.describe()}; candidate "
                f"raised {found.describe()}")
    message = f"[{severity}] {text}" if severity != "divergence" else text
    return Divergence(kind, str(subject), message, detail, severity, finding=finding,
                      headline=f"{subject}: {message.splitlines()[0]}"
                      if subject != "load" else message.splitlines()[0],
                      expected=expected.describe(), found=found.describe(), **families)
