"""The steps every property shares: write a case's checkpoint, load it with the reference
and the candidate, compare, and on a divergence fail with a message a loader author can
act on (and write the record, once Hypothesis has shrunk the example)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from hypothesis import note
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument

from generators.cases import LoadCase
from generators.checkpoints import CheckpointPlan
from reference.contract import INDEX_FILE, LoadOptions
from reference.names import layout_keys
from reference.tp import rank_slice
from .baseline import divergence_key, short_test, signature
from .repro import CASE_FILE
from .compare import (SEVERITIES, Divergence, Outcome, compare_outcomes, compare_states,
                      run_outcome)
from .fp8_compare import refine_fp8
from .session import current
from .verify import unreported_sharing
from .survival import call_with_timeout

__all__ = ["written", "load_both", "check_case", "outcome_divergences", "fail_on", "fail_if_states_differ",
           "provenance", "name_sets", "rerun_command", "count_example", "seed_for", "seeded",
           "seed_machine"]

# Name sets compared only when the candidate claims the capability that defines them.
_NAME_SETS = {"track": ("loaded", "missing"), "strict": ("unexpected", "ignored")}


def name_sets(capabilities: frozenset[str]) -> tuple[str, ...]:
    return tuple(n for cap, names in _NAME_SETS.items() if cap in capabilities for n in names)


def _nodeid() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "conformance").split(" ")[0]


def _from_here(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _calling_test_module():
    """The suite's test module on the stack (a nodeid may not name its file: with --pyargs
    from outside pytest's rootdir it is `::test_name`)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(f"{__package__}.test_"):
            return sys.modules[name]
        frame = frame.f_back
    return None


def _test_target() -> list[str]:
    """This test as the user can name it from where they stand: its file (the suite's own
    copy, wherever pytest's rootdir is) relative to the working directory, or, when the
    suite lies elsewhere (an installed one), `--pyargs conformance.test_x::name`."""
    path, _, rest = _nodeid().partition("::")
    module = _calling_test_module()
    test_file = Path(module.__file__ if module else Path(__file__).parent / Path(path).name
                     ).resolve()
    if Path.cwd() in test_file.parents:
        return [f"{_from_here(test_file)}::{rest}"]
    return ["--pyargs", f"{__package__}.{test_file.stem}::{rest}"]


def rerun_command() -> str:
    """The one line that replays this test's failure, runnable as printed from the working
    directory: the interpreter that ran the suite, the PYTHONPATH it had (where an
    out-of-tree adapter lives), the test, the loader and the profile (derandomized
    profiles replay as is; others need the seed)."""
    run = current()
    parts = [_from_here(Path(sys.executable)), "-m", "pytest", *_test_target(),
             "--loader", run.loader_name, f"--hypothesis-profile={run.profile}"]
    if run.isolated:
        parts.append("--isolate")
    if run.seed is not None:
        parts.append(f"--hypothesis-seed={run.seed}")
    if run.device != "cpu":
        parts.append(f"--device={run.device}")
    if run.baseline is not None:  # known divergences pass, so the search goes where it went
        parts.append(f"--baseline={run.baseline.path}")
    pythonpath = os.environ.get("PYTHONPATH")
    prefix = f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else ""
    return prefix + " ".join(shlex.quote(p) for p in parts)


def seed_for(nodeid: str) -> int | None:
    """A random profile's seed for one test: derived from the run's seed and the test's id,
    so a test draws the same examples whichever xdist worker runs it, and the re-run line's
    `--hypothesis-seed` reproduces it. None when the profile is derandomized."""
    seed = current().seed
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{short_test(nodeid)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# Hypothesis reads a test's seed from this attribute (given-wrapped functions and state
# machine classes). Its public `seed()` decorator also sets the test's database to None,
# and a forced global seed turns the database off too: either way a nightly failure would
# never replay. tests/test_baseline.py proves the database round trip.
_SEED_ATTRIBUTE = "_hypothesis_internal_use_seed"


@contextmanager
def seeded(item) -> Iterator[None]:
    """Seed one Hypothesis test (an `@given` function) for the length of its call, keeping
    its example database on."""
    function = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
    test_seed = seed_for(item.nodeid)
    if test_seed is None or not hasattr(function, _SEED_ATTRIBUTE):
        yield
        return
    previous = getattr(function, _SEED_ATTRIBUTE)
    setattr(function, _SEED_ATTRIBUTE, test_seed)
    try:
        yield
    finally:
        setattr(function, _SEED_ATTRIBUTE, previous)


def seed_machine(machine: type) -> type:
    """The same for a RuleBasedStateMachine run from inside a test."""
    setattr(machine, _SEED_ATTRIBUTE, seed_for(_nodeid()))
    return machine


def count_example() -> None:
    run, nodeid = current(), _nodeid()
    run.examples[nodeid] = run.examples.get(nodeid, 0) + 1


@contextmanager
def written(plan: CheckpointPlan) -> Iterator[Path]:
    """A fresh directory holding the plan's checkpoint, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="loadcheck-") as tmp:
        yield plan.write(Path(tmp) / "checkpoint")


# After a candidate hung once in a test, its calls get this long: Hypothesis replays and
# shrinks the failure, and each replay must not cost the full timeout again.
HUNG_RETRY_TIMEOUT = 1.0


def candidate_call(fn: Callable[[], object]) -> Outcome:
    """Run one candidate call under the run's timeout (in process, or in the isolated
    child, which enforces the timeout by killing itself)."""
    run, nodeid = current(), _nodeid()
    timeout = min(run.timeout, HUNG_RETRY_TIMEOUT) if nodeid in run.hung_tests else run.timeout
    if run.isolated:
        run.candidate.timeout = timeout
        outcome = run_outcome(fn)
    else:
        outcome = run_outcome(lambda: call_with_timeout(fn, timeout))
    if outcome.family == "hang":
        run.hung_tests.add(nodeid)
    return outcome


def load_both(case, directory: Path, options: LoadOptions | None = None,
              spec=None) -> tuple[Outcome, Outcome]:
    run, options = current(), options or case.options
    spec = spec or case.plan.spec
    expected = run_outcome(lambda: run.reference.load(str(directory), spec, options))
    found = candidate_call(lambda: run.candidate.load(str(directory), spec, options))
    return expected, found


def provenance(case: LoadCase, directory: Path | None, options: LoadOptions | None = None
               ) -> Callable[[str], str]:
    """canonical name -> 'rows a:b of checkpoint key K (file F); tp rank r/n holds ...'."""
    options, spec = options or case.options, case.plan.spec
    source = {}
    for key, target in layout_keys(spec, case.plan.fused).items():
        for slot in target.slots:
            rows = f"rows {slot.start}:{slot.stop} of " if len(target.slots) > 1 else ""
            source[slot.canonical] = f"{rows}checkpoint key {key!r}"
    weight_map = {}
    if directory is not None and (directory / INDEX_FILE).exists():
        weight_map = json.loads((directory / INDEX_FILE).read_text()).get("weight_map", {})

    def where(name: str) -> str:
        text = source.get(name, "")
        key = re.search(r"key '([^']+)'", text)
        if key and key.group(1) in weight_map:
            text += f" in {weight_map[key.group(1)]}"
        piece = rank_slice(spec, name, options.tp_size, options.tp_rank)
        if piece is not None:
            text += (f"; tp rank {options.tp_rank}/{options.tp_size} holds [{piece.start}:"
                     f"{piece.stop}] of dim {piece.dim}")
        return text
    return where


def _record_known(known: dict[str, list[Divergence]], prop: str, case, nodeid: str) -> None:
    """A baseline entry seen in this test: one record per entry and test (the first example
    that shows it), which the run's verdict and the report read."""
    run = current()
    for entry_id, divergences in known.items():
        if (entry_id, nodeid) in run.known_recorded:
            continue
        run.known_recorded.add((entry_id, nodeid))
        run.records.write({
            "type": "known", "entry": entry_id, "test": nodeid, "property": prop,
            "loader": run.loader_name, "case": case.summary(), "rerun": rerun_command(),
            "signature": signature(nodeid, [vars(d) for d in divergences]),
            "severity": min((d.severity for d in divergences), key=SEVERITIES.index),
            "divergences": [vars(d) for d in divergences[:12]]})


def _collect(divergences: list[Divergence], prop: str, case, nodeid: str) -> None:
    """--baseline-write: every divergence not seen yet in this test, as a record the baseline
    is written from at the end of the run; nothing fails, so every example runs."""
    run = current()
    unseen = []
    for divergence in divergences:
        key = (nodeid, str(sorted(divergence_key(vars(divergence)).items())))
        if key not in run.collected:
            run.collected.add(key)
            unseen.append(divergence)
    if unseen:
        run.records.write({
            "type": "divergence", "stage": "collected", "property": prop, "test": nodeid,
            "loader": run.loader_name, "case": case.summary(), "rerun": rerun_command(),
            "severity": min((d.severity for d in unseen), key=SEVERITIES.index),
            "signature": signature(nodeid, [vars(d) for d in unseen]),
            "divergences": [vars(d) for d in unseen]})


def fail_on(divergences: list[Divergence], prop: str, case,
            directory: Path | None = None, title: str = "") -> None:
    """Raise a readable AssertionError (and write the record, on the final replay).
    Divergences the run's baseline knows are recorded as known and do not fail: the
    example fails only on what is new, so a known bug never masks another. So fail_on may
    return after divergences: a caller that cannot go on after one returns itself."""
    if not divergences:
        return
    run, nodeid = current(), _nodeid()
    known: dict[str, list[Divergence]] = {}
    if run.baseline is not None:
        known, divergences = run.baseline.split(nodeid, divergences)
        _record_known(known, prop, case, nodeid)
        if not divergences:
            return
    if run.baseline_write:
        _collect(divergences, prop, case, nodeid)
        return
    first = nodeid not in run.first_failure
    run.first_failure.setdefault(nodeid, run.examples.get(nodeid, 0))
    command = rerun_command()
    lines = [f"loadcheck: {run.loader_name} diverges from the reference [{prop}]"
             + (f": {title}" if title else ""),
             f"  case: {case.summary()}"]
    lines += [f"  - {d.message}" for d in divergences[:12]]
    if len(divergences) > 12:
        lines.append(f"  ... and {len(divergences) - 12} more divergences")
    if known:
        lines.append(f"  (known in this example, not failing: {', '.join(sorted(known))} "
                     f"from {run.baseline.path})")
    lines.append(f"  re-run: {command}")
    message = "\n".join(lines)
    try:
        final, hypothesis_test = current_build_context().is_final, True
    except InvalidArgument:  # a plain (parametrized) test, not under Hypothesis
        final, hypothesis_test = True, False
    if final and hypothesis_test:
        note(message)
    if final or first:
        # Written when first found (so a killed run keeps it) and again once shrunk.
        record = {
            "type": "divergence", "stage": "final" if final else "first",
            "property": prop, "test": nodeid, "loader": run.loader_name,
            "severity": min((d.severity for d in divergences), key=SEVERITIES.index),
            "case": case.summary(), "spec": case.plan.spec.to_dict(),
            "checkpoint": case.plan.summary(), "options": case.options.summary(),
            "plan": repr(case.plan), "rerun": command,
            "examples_before_failure": run.first_failure[nodeid],
            "signature": signature(nodeid, [vars(d) for d in divergences]),
            "divergences": [vars(d) for d in divergences],
        }
        if directory is not None and directory.exists():
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", short_test(nodeid))[:80]
            target = run.records.repro_directory / slug
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(directory, target)
            (target / CASE_FILE).write_text(json.dumps({
                "property": prop, "loader": run.loader_name, "spec": case.plan.spec.to_dict(),
                "options": vars(case.options)}, indent=1))
            record["repro_checkpoint"] = str(target)
            record["repro_command"] = (f"python -m conformance.repro {shlex.quote(str(target))}"
                                       f" --loader {shlex.quote(run.loader_name)}")
        run.records.write(record)
    raise AssertionError(message)


def outcome_divergences(case: LoadCase, expected: Outcome, found: Outcome,
                        directory: Path | None) -> list[Divergence]:
    """compare_outcomes for a case, with quantized matrices reported one per matrix."""
    divergences = compare_outcomes(expected, found, name_sets=name_sets(current().capabilities),
                                   device=case.options.device,
                                   where=provenance(case, directory))
    if expected.result is not None and found.result is not None:  # the objects, not the report
        divergences += unreported_sharing(found.result.state, found.result.aliases)
    return refine_fp8(divergences, expected.result and expected.result.state,
                      found.result and found.result.state, case.plan.spec)


def check_case(case: LoadCase, prop: str) -> tuple[Outcome, Outcome]:
    """The standard property: the candidate's outcome equals the reference's."""
    count_example()
    with written(case.plan) as directory:
        expected, found = load_both(case, directory)
        fail_on(outcome_divergences(case, expected, found, directory), prop, case, directory)
    return expected, found


def fail_if_states_differ(first: Outcome, second: Outcome, prop: str, case: LoadCase,
                          title: str) -> None:
    """Two loads by the candidate that must agree bit for bit (when both loaded)."""
    if first.result is not None and second.result is not None:
        divergences = compare_states(first.result.state, second.result.state,
                                     where=lambda n: title)
        fail_on(refine_fp8(divergences, first.result.state, second.result.state,
                           case.plan.spec), prop, case, title=title)
