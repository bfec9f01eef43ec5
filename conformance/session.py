"""The run's configuration, set once by the pytest plugin and read by the properties."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from reference.contract import Loader, ModelSupport
from .baseline import Baseline
from reference.loading import ReferenceLoader
from .records import RecordWriter

__all__ = ["RunConfig", "configure", "current"]


@dataclass
class RunConfig:
    loader_name: str
    candidate: Loader
    device: str
    profile: str
    seed: int | None
    records: RecordWriter
    timeout: float = 60.0  # seconds a candidate call may take before it counts as a hang
    isolated: bool = False
    hung_tests: set[str] = field(default_factory=set)  # tests whose candidate hung once
    max_hung_tests: int = 5  # after this many hung tests (in the run), stop calling it; 0: never
    # nodeid -> side effects of candidate calls no outcome comparison reports (guard.py)
    unreported_effects: dict[str, list] = field(default_factory=dict)
    # nodeid -> the case of the example running now (its loads) and the test's property name,
    # for the side effects an example leaves unreported when it ends (harness.py)
    example_case: dict[str, Any] = field(default_factory=dict)
    property_name: dict[str, str] = field(default_factory=dict)
    # nodeid -> examples run so far, and the example number of the first failure.
    examples: dict[str, int] = field(default_factory=dict)
    first_failure: dict[str, int] = field(default_factory=dict)
    baseline: Baseline | None = None   # known divergences: reported, not failed
    baseline_strict: bool = False      # an entry that no longer reproduces fails the run
    baseline_write: bool = False       # adopt: record every unknown divergence, fail nothing
    collected: set[tuple[str, str]] = field(default_factory=set)  # (test, divergence key)
    known_recorded: set[tuple[str, str]] = field(default_factory=set)  # (entry id, test)
    outcomes: dict[str, str] = field(default_factory=dict)  # test -> outcome (controller)
    judge: Any = None  # conformance.guard.JudgeSnapshot, taken at the first candidate call

    @cached_property
    def reference(self) -> ReferenceLoader:
        """The reference under the candidate's declared semantic variants. It copies
        instead of mapping files: a candidate that writes into its checkpoint must not
        change the expected result (conformance.guard)."""
        return ReferenceLoader(variants=dict(self.candidate.variants), map_weights=False)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self.candidate.capabilities)

    @property
    def support(self) -> ModelSupport:
        """The models the candidate declares it takes (default: all the suite generates)."""
        return getattr(self.candidate, "model_support", None) or ModelSupport()


_current: RunConfig | None = None


def configure(config: RunConfig) -> None:
    global _current
    _current = config


def current() -> RunConfig:
    if _current is None:
        raise RuntimeError("loadcheck is not configured: run the suite with "
                           "`pytest conformance --loader NAME`")
    return _current
