"""Two outcomes of a load -> the divergences between them, each with a readable message.

Tensors are compared bit for bit (NaN-aware: bits, not values), after dtype and shape;
name sets exactly; errors by family (a candidate may raise any family the reference
lists as an alternative), then by what the error names (conformance/error_subjects.py).
"One raised, the other did not" is a divergence like any wrong number.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from reference.contract import LoadError, LoadResult
from reference.dtypes import PLAIN_FLOATS, poison_mask

__all__ = ["Outcome", "Divergence", "SEVERITIES", "run_outcome", "compare_outcomes",
           "compare_tensor", "compare_states"]


@dataclass
class Outcome:
    """What one loader did with one case: a result, or the exception it raised."""

    result: LoadResult | None = None
    error: BaseException | None = None

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
        frame = traceback.extract_tb(self.error.__traceback__)[-1:]
        where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
        return f"{type(self.error).__name__} (not a loadcheck error){where}: {self.error}"


def run_outcome(load: Callable[[], LoadResult]) -> Outcome:
    try:
        return Outcome(result=load())
    except Exception as exc:  # a candidate may raise anything; that is the point
        return Outcome(error=exc)


# How bad a divergence is, worst first: a candidate that loads a checkpoint the reference
# refuses as unsafe or corrupt; one whose process died or hung; any other difference.
SEVERITIES = ("critical", "crash", "hang", "divergence")
_REFUSALS = frozenset({"unsafe_checkpoint", "corrupt_checkpoint"})


@dataclass
class Divergence:
    kind: str          # tensor | dtype | shape | absent | names | error | buffer | alias | placement
    subject: str       # the tensor, key or name set it is about
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    severity: str = "divergence"


def _bits(t: torch.Tensor) -> torch.Tensor:
    """One integer per element holding its bit pattern, for exact NaN-aware comparison."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if t.dtype == torch.bool:
        return flat.to(torch.uint8)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return flat.view(as_int)


def _fmt(t: torch.Tensor, index: int) -> str:
    if t.dtype.itemsize == 1 and t.dtype not in PLAIN_FLOATS and not t.dtype.is_floating_point \
            and t.dtype not in (torch.bool, torch.int8, torch.uint8):
        # sub-byte dtypes (uint4, int2, ...): no kernels, so show the stored byte
        return f"0x{t.reshape(-1).view(torch.uint8)[index].item():02x}"
    value = t.reshape(-1)[index]
    if t.dtype in PLAIN_FLOATS:
        return f"{value.item():.6g}"
    if t.dtype.is_floating_point:  # FP8: the code is what matters
        code = value.reshape(1).view(torch.uint8).item()
        return f"{value.float().item():.6g} (code 0x{code:02x})"
    return str(value.item())


def compare_tensor(name: str, expected: torch.Tensor, found: torch.Tensor,
                   where: str = "", values: bool = True) -> Divergence | None:
    """None when `found` equals `expected` bit for bit (with dtype and shape; only those
    two when `values` is false)."""
    suffix = f"; {where}" if where else ""
    if found.dtype != expected.dtype:
        return Divergence("dtype", name, f"{name}: dtype {found.dtype}, expected "
                          f"{expected.dtype}{suffix}", {"expected": str(expected.dtype),
                                                         "found": str(found.dtype)})
    if tuple(found.shape) != tuple(expected.shape):
        return Divergence("shape", name, f"{name}: shape {list(found.shape)}, expected "
                          f"{list(expected.shape)}{suffix}",
                          {"expected": list(expected.shape), "found": list(found.shape)})
    if not values:
        return None
    if found.is_meta:
        return Divergence("placement", name, f"{name}: still on the meta device (never "
                          f"materialised){suffix}", {"found": "meta"})
    exp_bits, got_bits = _bits(expected), _bits(found)
    if torch.equal(exp_bits, got_bits):  # the common case, without a mask and its sum
        return None
    differs = exp_bits != got_bits
    count = int(differs.sum())
    if not count:
        return None
    found_cpu, expected_cpu = found.detach().cpu(), expected.detach().cpu()
    first = int(differs.nonzero()[0])
    index = list(torch.unravel_index(torch.tensor(first), expected.shape)) if expected.dim() else []
    index = [int(i) for i in index]
    detail: dict[str, Any] = {"mismatched": count, "numel": expected.numel(),
                              "shape": list(expected.shape), "dtype": str(expected.dtype),
                              "first_index": index, "expected_value": _fmt(expected_cpu, first),
                              "found_value": _fmt(found_cpu, first)}
    text = f"{name}: {count} of {expected.numel()} elements differ"
    if expected.dim() >= 1:
        rows = differs.reshape(expected.shape[0], -1).any(dim=1).nonzero().reshape(-1)
        detail["rows"] = [int(rows[0]), int(rows[-1]) + 1]
        text += f" (rows {detail['rows'][0]}:{detail['rows'][1]} of {expected.shape[0]})"
    poisoned = int((poison_mask(found_cpu).reshape(-1) & differs).sum()) \
        if found.dtype != torch.bool else 0
    if poisoned:
        detail["poisoned"] = poisoned
        text += f", {poisoned} still hold the poison pattern (never written)"
    if expected.dtype.is_floating_point:
        diff = (found_cpu.double() - expected_cpu.double()).abs().reshape(-1)[differs]
        scale = expected_cpu.double().abs().reshape(-1)[differs]
        finite = diff[diff.isfinite()]
        detail["max_abs_diff"] = float(finite.max()) if finite.numel() else float("nan")
        rel = (finite / scale[diff.isfinite()].clamp_min(1e-30)) if finite.numel() else finite
        detail["max_rel_diff"] = float(rel.max()) if rel.numel() else float("nan")
        text += f"; max abs diff {detail['max_abs_diff']:.3g}"
    text += (f"\n    first at {index}: expected {detail['expected_value']}, found "
             f"{detail['found_value']} ({expected.dtype}){suffix}")
    return Divergence("tensor", name, text, detail)


def compare_states(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                   skip_values: frozenset[str] = frozenset(),
                   where: Callable[[str], str] = lambda name: "") -> list[Divergence]:
    """Every name of `expected` must be in `found` with equal bits (values of names in
    `skip_values` are unspecified: only dtype and shape are checked); no extra names."""
    out = []
    for name in expected:
        if name not in found:
            out.append(Divergence("absent", name, f"{name}: absent from the "
                                  f"candidate's result{('; ' + where(name)) if where(name) else ''}"))
            continue
        div = compare_tensor(name, expected[name], found[name], where(name),
                             values=name not in skip_values)
        if div is not None:
            out.append(div)
    for name in sorted(set(found) - set(expected)):
        out.append(Divergence("absent", name, f"{name}: in the candidate's result but not "
                              f"a parameter of this model"))
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
                                  {"expected": sorted(exp), "found": sorted(got)}))
    return out


def compare_outcomes(expected: Outcome, found: Outcome, *, name_sets: tuple[str, ...],
                     device: str, where: Callable[[str], str] = lambda name: "",
                     any_refusal: bool = False) -> list[Divergence]:
    """All divergences between the reference's outcome and the candidate's. With
    `any_refusal` (hostile input), any error of the family counts as refusing it."""
    if expected.error is not None or found.error is not None:
        if isinstance(expected.error, LoadError) and isinstance(found.error, LoadError) \
                and (any_refusal or found.error.family in expected.error.alternatives):
            from .error_subjects import subject_divergences  # imports this module
            return [] if any_refusal else subject_divergences(expected.error, found.error)
        detail = {"expected": expected.describe(), "found": found.describe(),
                  "expected_family": expected.family, "found_family": found.family}
        subject = getattr(expected.error, "subject", None) or getattr(
            found.error, "subject", None) or "load"
        severity = "divergence"
        if found.family in ("hang", "crash"):
            severity = found.family
        elif found.error is None and expected.family in _REFUSALS:
            severity = "critical"
        if found.error is None:
            text = f"candidate loaded a checkpoint the reference refuses: {expected.describe()}"
        elif expected.error is None:
            text = f"candidate raised where the reference loads: {found.describe()}"
        else:
            text = (f"errors differ: reference raised {expected.describe()}; candidate "
                    f"raised {found.describe()}")
        return [Divergence("error", str(subject), f"[{severity}] {text}" if severity !=
                           "divergence" else text, detail, severity)]
    exp, got = expected.result, found.result
    out = _name_sets(exp, got, name_sets)
    out += compare_states(exp.state, got.state, skip_values=exp.missing, where=where)
    if got.buffers:
        out += compare_states(exp.buffers, got.buffers, where=lambda n: "a non-persistent "
                              "buffer: it must equal what the constructor computes")
    if dict(exp.aliases) != dict(got.aliases):
        out.append(Divergence("alias", "aliases", f"storage sharing: expected {dict(exp.aliases)}"
                              f" (tied head is the embedding), found {dict(got.aliases)}",
                              {"expected": dict(exp.aliases), "found": dict(got.aliases)}))
    want = torch.device(device).type
    for name, place in sorted(got.placement.items()):
        if torch.device(place).type != want:
            out.append(Divergence("placement", name, f"{name}: storage on {place}, expected "
                                  f"{device}", {"expected": device, "found": place}))
    return out
