"""How a failing example reads: its divergences ordered by how likely each is the cause,
the message (root cause first, one line per consequence), and the exception it raises.

The exception's class is the root cause's finding (`loadcheck.unwritten`,
`loadcheck.scale`, ...): Hypothesis tells failures apart by exception type and origin, so
two unrelated bugs that a property meets in one run (a slot never written, and integer
values off by one) are two failures, each shrunk and reported, instead of one that masks
the other. pytest's short summary line (`-rf`) then reads
`FAILED test - loadcheck.unwritten: P2 coverage: <tensor>: never written: ...`.
"""

from __future__ import annotations

import hashlib
import re

from reports.identity import short_test
from reports.schema import FINDINGS, Divergence, severity_rank

__all__ = ["FINDING_ORDER", "ordered_by_cause", "failure_message", "failure_type",
           "LoadcheckFailure", "repro_slug", "MAX_LISTED"]

# Which finding is most likely the cause when one example shows several: what makes the
# rest follow (a slot never written is why the forward output and the names differ too),
# then what is wrong in kind (shape, dtype) before what is wrong in degree (values,
# rounding), and bookkeeping last.
FINDING_ORDER = ("unpickled", "checkpoint", "judge", "accepted", "crash", "hang", "exception",
                 "same_slice",
                 "unwritten", "missing", "extra", "meta", "shape", "dtype", "scale",
                 "input_scale", "non_finite", "refused", "error_family", "error_subject",
                 "codes", "values",
                 "rounding", "alias", "placement", "bytes", "names", "global_state", "process",
                 "other")

# Consequences listed one line each, at most this many; the record holds them all.
MAX_LISTED = 8


def _cause_rank(divergence: Divergence) -> tuple[int, int]:
    finding = divergence.finding if divergence.finding in FINDING_ORDER else "other"
    return severity_rank(divergence.severity), FINDING_ORDER.index(finding)


def ordered_by_cause(divergences: list[Divergence]) -> list[Divergence]:
    """The most likely root cause first, the rest in their order (stable)."""
    if not divergences:
        return []
    first = min(range(len(divergences)), key=lambda i: _cause_rank(divergences[i]))
    return [divergences[first]] + divergences[:first] + divergences[first + 1:]


def failure_message(loader: str, prop: str, case: str, divergences: list[Divergence],
                    rerun: str, title: str = "", known: list[str] | None = None,
                    baseline: str = "") -> str:
    """The text a failing test raises: the property and the root cause's headline on the
    first line; which loader and case; the root cause in full; the other divergences one
    line each; the re-run line."""
    cause, rest = divergences[0], divergences[1:]
    lines = [f"{prop}: {cause.headline}",
             f"  {loader} diverges from the reference" + (f" ({title})" if title else "")
             + f"; case: {case}"]
    body = cause.message.splitlines()
    if body and body[0] == cause.headline:  # the first line says it already
        body = body[1:]
    lines += [f"    {line.strip()}" for line in body if line.strip()]
    if rest:
        lines.append(f"  and {len(rest)} more divergence{'s' if len(rest) > 1 else ''}"
                     + (" (most likely consequences of the first):" if cause.finding in (
                         "unwritten", "same_slice", "missing", "crash", "hang", "exception")
                        else ":"))
        lines += [f"  - {d.headline}" for d in rest[:MAX_LISTED]]
        if len(rest) > MAX_LISTED:
            lines.append(f"  - ... {len(rest) - MAX_LISTED} more in the record")
    if known:
        lines.append(f"  (known in this example, not failing: {', '.join(known)} from {baseline})")
    lines.append(f"  re-run: {rerun}")
    return "\n".join(lines)


class LoadcheckFailure(AssertionError):
    """A candidate diverged from the reference. Subclassed per finding (see the module)."""


_FAILURE_TYPES: dict[str, type[LoadcheckFailure]] = {}


def failure_type(finding: str) -> type[LoadcheckFailure]:
    """The exception class of a failure whose root cause is `finding` (one per finding, so
    Hypothesis reports distinct causes as distinct failures)."""
    finding = finding if finding in FINDINGS else "other"
    if finding not in _FAILURE_TYPES:
        cls = type(finding, (LoadcheckFailure,), {"__doc__": FINDINGS[finding]})
        cls.__module__ = "loadcheck"
        _FAILURE_TYPES[finding] = cls
    return _FAILURE_TYPES[finding]


def repro_slug(nodeid: str) -> str:
    """A directory name for a test's repro checkpoint: the test's name and parameters,
    readable from the left, cut at 80 characters with a digest of the whole id so that two
    long ids never share one."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", short_test(nodeid)).strip("_")
    if len(text) <= 80:
        return text
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:10]
    return f"{text[:69]}-{digest}"
