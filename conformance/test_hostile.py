"""Hostile checkpoints (P11 and friends): every case of the named corpus, and byte-level
corruptions of valid checkpoints, must be refused as the reference refuses them. A
candidate that loads what the reference refuses as unsafe or corrupt is a `critical`
divergence."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from generators.cases import LoadCase
from generators.hostile import (BASE_SPEC, HOSTILE_CASES, VALID_LAYOUTS, Corruption, HostileCase,
                                corruptions)
from generators.hostile_bounds import BOUNDED_CLASSES
from generators.specs import model_specs
from generators.unpickling import marker_path
from reference.contract import LoadOptions, ModelSpec
from .compare import Divergence, compare_outcomes
from .harness import count_example, fail_on, load_both, name_sets
from .session import current


@dataclass(frozen=True)
class _Hostile:
    """What the harness reports about a hostile checkpoint (it is not a CheckpointPlan)."""

    spec: ModelSpec
    text: str
    fused: bool = False

    def summary(self) -> str:
        return self.text


def _check(case: LoadCase, directory: Path, prop: str, must_refuse: str | None = None,
           may_load: bool = False) -> None:
    __tracebackhide__ = True  # the failure message says it all
    count_example()
    run = current()
    expected, found = load_both(case, directory, case.options, spec=case.plan.spec)
    if must_refuse is not None and expected.family != must_refuse:
        raise AssertionError(f"the reference itself did not refuse this hostile checkpoint "
                             f"with {must_refuse}: {expected.describe()} (a loadcheck bug)")
    divergences = [] if may_load and found.family == "ok" else compare_outcomes(
        expected, found, name_sets=name_sets(run.capabilities), device=case.options.device,
        any_refusal=True)
    if marker_path(directory).exists():  # whatever the candidate did next, this is the finding
        divergences.insert(0, Divergence(
            "error", "unpickling", "[critical] the candidate unpickled a checkpoint file: it called "
            "the global the pickle names (a harmless marker here; any code in a real file)",
            severity="critical", finding="unpickled",
            headline="[critical] the candidate unpickled a checkpoint file"))
    fail_on(divergences, prop, case, directory)


def _refuses_hostile(hostile: HostileCase, may_load: bool = False) -> None:
    """Skip what the loader does not claim or support; else write the case and check it
    (`may_load`: loading it is no divergence, only crashing or hanging on it is)."""
    __tracebackhide__ = True
    run = current()
    lacking = sorted(hostile.needs - run.capabilities)
    if lacking:
        pytest.skip(f"loader {run.loader_name!r} does not claim {', '.join(lacking)}")
    outside = run.support.outside(hostile.spec)
    if outside:
        pytest.skip(f"loader {run.loader_name!r} does not support {', '.join(outside)}")
    with tempfile.TemporaryDirectory(prefix="loadcheck-hostile-") as tmp:
        directory = Path(tmp) / "checkpoint"
        directory.mkdir()
        hostile.write(directory)
        options = LoadOptions(device=run.device, check_finite=hostile.options.check_finite)
        _check(LoadCase(_Hostile(hostile.spec, hostile.summary()), options), directory,
               "P11 hostile checkpoint", must_refuse=hostile.family, may_load=may_load)


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_named_hostile_checkpoint_is_refused(name):
    _refuses_hostile(HOSTILE_CASES[name])


@pytest.mark.parametrize("name", sorted(BOUNDED_CLASSES))
def test_resource_hostile_checkpoint_is_refused(name):
    """Checkpoints that attack the reader's resources (not regular files, amplifying or
    deeply nested JSON, names the OS refuses, generators/hostile_bounds.py) at their smallest
    size: refused as the reference refuses them, or, where only the reference's own bounds
    refuse it (`bound_only`: a long header, a padded index, a deep unknown field), loaded;
    never a crash or a hang. A FIFO or /dev/zero never lets a naive reader return, which
    in process would take the run down: those need --isolate."""
    cls = BOUNDED_CLASSES[name]
    if cls.blocks_a_reader and not current().isolated:
        pytest.skip(f"{name}: a naive reader never returns from it (blocked, or reading "
                    f"without end), which in process takes the run down; run with --isolate "
                    f"to test it")
    _refuses_hostile(cls.case(cls.sizes[0]), may_load=cls.bound_only)


@pytest.mark.requires("load")
@given(data=st.data())
def test_corrupted_bytes_are_refused_or_loaded_alike(data):
    """Cut a valid file anywhere, or overwrite a few bytes anywhere (the header most
    often): the candidate refuses what the reference refuses, and otherwise agrees."""
    run = current()
    spec = data.draw(model_specs(support=run.support, max_layers=1), label="spec")
    corruption: Corruption = data.draw(corruptions(spec), label="corruption")
    with tempfile.TemporaryDirectory(prefix="loadcheck-corrupt-") as tmp:
        directory = corruption.write(Path(tmp) / "checkpoint")
        case = LoadCase(_Hostile(spec, corruption.summary()), LoadOptions(device=run.device))
        _check(case, directory, "P11 corrupted bytes")


# ----- valid layouts a loader must not refuse (issue 18: the hub cache) -------------------
@pytest.mark.parametrize("name", sorted(VALID_LAYOUTS))
def test_valid_layout_loads_like_the_reference(name):
    """A hub-cache snapshot (files that are symlinks into the repo's blobs/) is a valid
    checkpoint: the candidate loads it exactly as the reference does."""
    run = current()
    if name.endswith("sharded") and "sharded" not in run.capabilities:
        pytest.skip(f"loader {run.loader_name!r} does not claim sharded")
    with tempfile.TemporaryDirectory(prefix="loadcheck-layout-") as tmp:
        directory = VALID_LAYOUTS[name](Path(tmp))
        case = LoadCase(_Hostile(BASE_SPEC, f"valid layout {name!r}: {directory.name}"),
                        LoadOptions(device=run.device))
        _check(case, directory, "P11 valid layout")
