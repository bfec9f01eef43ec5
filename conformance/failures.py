"""One failure type per kind of divergence, so one bug cannot mask another.

Hypothesis tells failures apart by exception type and raising line, and reports each
distinct one (`report_multiple_bugs`). Every divergence is raised from the same line of
`fail_on`, so without distinct types every bug of a property would shrink into one report,
the first found. The type is keyed by the property and the example's first, most severe
divergence: its kind (tensor, dtype, names, error...) and the kind of tensor it is about
(bias, norm, embedding, ...), or for an error the pair of error families. A bug that touches
every tensor shows first on the embedding, so it stays one failure; a bias bug and a norm
bug are two.
"""

from __future__ import annotations

from functools import lru_cache

from .compare import SEVERITIES, Divergence

__all__ = ["DivergenceFailure", "failure_type", "tensor_kind"]


class DivergenceFailure(AssertionError):
    """Base of the per-kind failure types (an AssertionError, as pytest expects)."""


def tensor_kind(name: str) -> str:
    """The kind of tensor a canonical name is: bias, fp8 scale, norm, embedding, head,
    extra, buffer, weight (or '' for a subject that is no tensor)."""
    parts = name.split(".")
    if len(parts) < 2:
        return ""
    if "extras" in parts:
        return "extra"
    if parts[-1].endswith("_scale"):
        return "fp8 scale"
    if parts[-1] == "bias":
        return "bias"
    if any("norm" in p for p in parts):
        return "norm"
    if "embed_tokens" in parts:
        return "embedding"
    if parts[0] == "lm_head":
        return "head"
    return "weight" if parts[-1] == "weight" else "buffer"


def _key(divergence: Divergence) -> str:
    if divergence.kind == "error":
        detail = divergence.detail
        if "expected_family" in detail:
            return f"error {detail['expected_family']} -> {detail['found_family']}"
        return f"error in {divergence.subject.split(' ')[0]}"
    kind = tensor_kind(divergence.subject)
    return f"{divergence.kind} of {kind}" if kind else f"{divergence.kind} {divergence.subject}"


@lru_cache(maxsize=None)  # the same key must give the same type: that is the failure's identity
def _failure_type(prop: str, key: str) -> type[DivergenceFailure]:
    return type(f"DivergenceFailure[{prop}: {key}]", (DivergenceFailure,),
                {"__module__": __name__})


def failure_type(prop: str, divergences: list[Divergence]) -> type[DivergenceFailure]:
    """The failure type of an example that fails `prop` with `divergences`."""
    primary = min(divergences, key=lambda d: SEVERITIES.index(d.severity))
    return _failure_type(prop, _key(primary))
