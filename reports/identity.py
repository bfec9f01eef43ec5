"""What identifies a divergence across examples, cells and nights, from its record alone.

The suite writes a `signature` into every divergence record with these functions, baselines
match on `divergence_key`, and the report groups and compares nights by signature; records
of older runs, written without one, get theirs computed here."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

__all__ = ["short_test", "pattern", "divergence_key", "signature", "record_signature"]


def short_test(nodeid: str) -> str:
    """A test's id without the directory the suite was collected from:
    'test_fp8.py::test_zero[...]' for 'conformance/test_fp8.py::...' or an installed path."""
    path, sep, rest = nodeid.partition("::")
    return path.rsplit("/", 1)[-1] + sep + rest


# Indices that change from one drawn example to the next, not from one bug to another.
_VARYING = [(re.compile(r"(?<=\blayers\.)\d+(?=\.)"), "*"),
            # a temporary directory the suite made for this example
            (re.compile(r"\S*/loadcheck-[^/\s]+/"), "*/"),
            (re.compile(r"\brank \d+(/\d+)?"), "rank *"),
            (re.compile(r"\bslot \d+\b"), "slot *")]


def pattern(subject: str) -> str:
    """The subject with its example-dependent indices (layer, rank, slot) as `*`."""
    for regex, replacement in _VARYING:
        subject = regex.sub(replacement, subject)
    return subject


def divergence_key(divergence: Mapping[str, Any]) -> dict[str, str]:
    """A divergence's kind, its subject as a pattern, and for errors the two families."""
    key = {"kind": str(divergence.get("kind") or ""),
           "subject": pattern(str(divergence.get("subject") or ""))}
    detail = divergence.get("detail")
    if isinstance(detail, Mapping):
        for name in ("expected_family", "found_family"):
            if detail.get(name):
                key[name] = str(detail[name])
    return key


def signature(test: str, divergences: Iterable[Mapping[str, Any]]) -> str:
    """One line naming a failure by what diverged, stable across examples, cells and nights:
    'test_fp8.py::test_zero | fp8 model.layers.*.self_attn.q_proj.weight'."""
    parts = sorted({" ".join(divergence_key(d).values()) for d in divergences})
    return short_test(test) + " | " + "; ".join(parts)


def record_signature(record: Mapping[str, Any]) -> str:
    if record.get("signature"):
        return str(record["signature"])
    items = [d for d in record.get("divergences") or [] if isinstance(d, Mapping)]
    return signature(str(record.get("test") or "?"), items)
