"""The steps every property shares: write a case's checkpoint, load it with the reference
and the candidate, compare, and on a divergence fail with a message a loader author can
act on (and write the record, once Hypothesis has shrunk the example)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument

from generators.cases import LoadCase
from generators.checkpoints import CheckpointPlan
from reference.contract import INDEX_FILE, LoadOptions
from reference.names import fused_gate_up_rows, fused_qkv_rows, layout_keys
from reference.tp import rank_slice
from .baseline import case_features, divergence_key, short_test, signature
from .repro import CASE_FILE, save_checkpoint
from reports.schema import DivergenceRecord, Source, TPSlice, worst
from .compare import (Divergence, Outcome, Where, compare_outcomes, compare_states,
                      run_outcome)
from .failures import failure_message, failure_type, ordered_by_cause, repro_slug
from .quant_compare import refine_quantized
from .guard import CheckpointFingerprint, JudgeSnapshot, guarded_call
from .session import current
from .survival import HangBudget, HungTestStopped, call_with_timeout, checked_result
from .verify import unreported_sharing

__all__ = ["written", "load_both", "check_case", "outcome_divergences", "fail_on", "fail_if_states_differ",
           "report_leftover_effects", "drop_leftover_effects",
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


def _test_target(nodeid: str | None = None) -> list[str]:
    """This test as the user can name it from where they stand: its file (the suite's own
    copy, wherever pytest's rootdir is) relative to the working directory, or, when the
    suite lies elsewhere (an installed one), `--pyargs conformance.test_x::name`."""
    path, _, rest = (nodeid or _nodeid()).partition("::")
    module = _calling_test_module()
    test_file = Path(module.__file__ if module else Path(__file__).parent / Path(path).name
                     ).resolve()
    if Path.cwd() in test_file.parents:
        return [f"{_from_here(test_file)}::{rest}"]
    return ["--pyargs", f"{__package__}.{test_file.stem}::{rest}"]


def _survives(divergences) -> bool:
    """Whether replaying these divergences needs the candidate contained: it crashed the
    process or hung (replayed in process, a crash would kill the replay and a hang block it)."""
    return any(d.finding in ("crash", "hang") for d in divergences or ())


def _replay_options(divergences) -> str:
    """The repro command's options that make a crash or a hang observable."""
    if not _survives(divergences):
        return ""
    return f" --isolate --candidate-timeout {current().timeout:g}"


def rerun_command(nodeid: str | None = None, divergences=None) -> str:
    """The one line that replays this test's failure, runnable as printed from the working
    directory: the interpreter that ran the suite, the PYTHONPATH it had (where an
    out-of-tree adapter lives), the test, the loader and the profile (derandomized
    profiles replay as is; others need the seed). A crash or hang replays isolated, with
    the timeout that was in force."""
    run = current()
    parts = [_from_here(Path(sys.executable)), "-m", "pytest", *_test_target(nodeid),
             "--loader", run.loader_name, f"--hypothesis-profile={run.profile}"]
    if run.isolated or _survives(divergences):
        parts.append("--isolate")
    if _survives(divergences):
        parts.append(f"--candidate-timeout={run.timeout:g}")
    if run.seed is not None:
        parts.append(f"--hypothesis-seed={run.seed}")
    if run.device != "cpu":
        parts.append(f"--device={run.device}")
    if run.baseline is not None:  # known divergences pass, so the search goes where it went
        parts.append(f"--baseline={run.baseline.path}")
    return _as_invoked(parts)


def _as_invoked(parts: list[str]) -> str:
    """A command line runnable as printed from the working directory: the PYTHONPATH this
    run had (where an out-of-tree adapter lives), then `parts`, shell-quoted."""
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
    run.example_case.pop(nodeid, None)


def report_leftover_effects() -> None:
    """At an example's end (or a test's): what its candidate calls did to the process that
    no fail_on reported yet (an early return, a comparison the property skipped) fails this
    example, so it is recorded against the case that caused it, not a later one (or lost)."""
    __tracebackhide__ = True
    run, nodeid = current(), _nodeid()
    effects = run.unreported_effects.get(nodeid)
    if not effects:
        return
    case = run.example_case.get(nodeid)
    prop = run.property_name.get(nodeid) or nodeid.split("::")[-1].split("[")[0]
    if case is None:  # no load of this example to name: a plain failure, recorded as a crash
        run.unreported_effects.pop(nodeid)
        raise AssertionError(f"loadcheck: {run.loader_name}'s calls in this test changed the "
                             f"process: " + "; ".join(d.message for d in effects[:5]))
    fail_on([], prop, case, title="what the example's candidate calls did to the process")


def drop_leftover_effects() -> None:
    """An example that failed otherwise: Hypothesis replays it, and the replay meets them again."""
    current().unreported_effects.pop(_nodeid(), None)


@contextmanager
def written(plan: CheckpointPlan) -> Iterator[Path]:
    """A fresh directory holding the plan's checkpoint, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="loadcheck-") as tmp:
        yield plan.write(Path(tmp) / "checkpoint")


def candidate_call(fn: Callable[[], object], compared: bool = False) -> Outcome:
    """Run one candidate call under the run's timeout (in process, or in the isolated
    child, which enforces the timeout by killing itself). After a first hang in a test,
    the test stops (HungTestStopped): its hang record is written, and no shrinking replay
    costs a timeout again, so a run ends in bounded time (tests x timeout); after
    --max-hung-tests hung tests (in any of the run's processes), every later test that calls
    the candidate stops too.
    What the call did to the process (guard.py) goes with the outcome when `compared` (its
    comparison reports it), and always into the test's next fail_on (once: a fail_on leaves
    out what its divergences already hold), else the example's end reports it."""
    run, nodeid = current(), _nodeid()
    if nodeid in run.hung_tests:
        raise HungTestStopped(f"loadcheck: [hang] {run.loader_name} hung in this test (no "
                              f"answer within {run.timeout:g} s, the --candidate-timeout in "
                              f"force); its remaining examples were not run, the example that "
                              f"hung is in the run's records\n  re-run: {rerun_command()}")
    budget = hang_budget(run)
    if budget.exhausted():
        hung = budget.hung()
        raise HungTestStopped(f"loadcheck: [hang] not tested: {run.loader_name} already hung "
                              f"in {len(hung)} tests of this run ({', '.join(hung[:3])}"
                              f"{', ...' if len(hung) > 3 else ''}), the --max-hung-tests "
                              f"budget ({run.max_hung_tests}); tests that call it stop here so "
                              f"the run ends in bounded time; their hang records name the "
                              f"tests that hung")
    timeout = run.timeout
    if run.judge is None:
        run.judge = JudgeSnapshot()
    with guarded_call(None if run.isolated else run.judge, not run.isolated) as side_effects:
        if run.isolated:
            run.candidate.timeout = timeout
            outcome = run_outcome(fn)
        else:
            outcome = run_outcome(lambda: checked_result(call_with_timeout(fn, timeout)))
    if compared:
        outcome.side_effects += side_effects
    run.unreported_effects.setdefault(nodeid, []).extend(side_effects)
    if outcome.family == "hang":
        run.hung_tests.add(nodeid)
        budget.add(nodeid)
    return outcome


def hang_budget(run) -> HangBudget:
    """The run's --max-hung-tests budget, shared by its xdist workers through a file beside
    its records (the controller removes it at the end)."""
    return HangBudget(run.records.directory / f"hung-tests-{run.records.run_id}.txt",
                      run.max_hung_tests)


def load_both(case, directory: Path, options: LoadOptions | None = None,
              spec=None) -> tuple[Outcome, Outcome]:
    run, options = current(), options or case.options
    spec = spec or case.plan.spec
    expected = run_outcome(lambda: run.reference.load(str(directory), spec, options))
    fingerprint = CheckpointFingerprint(directory)
    run.example_case[_nodeid()] = case
    found = candidate_call(lambda: run.candidate.load(str(directory), spec, options),
                           compared=True)
    written_into = fingerprint.divergences()
    found.side_effects += written_into
    run.unreported_effects.setdefault(_nodeid(), []).extend(written_into)
    return expected, found


def provenance(case: LoadCase, directory: Path | None, options: LoadOptions | None = None
               ) -> Callable[[str], Where]:
    """canonical name -> where it comes from: checkpoint key (rows of a fused key, the
    shard), and the slice its tensor-parallel rank holds."""
    options, spec = options or case.options, case.plan.spec
    source: dict[str, Source] = {}
    for key, target in layout_keys(spec, case.plan.fused).items():
        for slot in target.slots:
            rows = [slot.start, slot.stop] if len(target.slots) > 1 else None
            source[slot.canonical] = Source(key, rows)
    slot_rows = _fused_slot_rows(spec, options.tp_size)
    weight_map = {}
    if directory is not None and (directory / INDEX_FILE).exists():
        weight_map = json.loads((directory / INDEX_FILE).read_text()).get("weight_map", {})

    def where(name: str) -> Where:
        found = source.get(name)
        if found is not None and found.key in weight_map:
            found = Source(found.key, found.rows, str(weight_map[found.key]))
        piece = rank_slice(spec, name, options.tp_size, options.tp_rank)
        tp = None if piece is None else TPSlice(options.tp_rank, options.tp_size, piece.dim,
                                                piece.start, piece.stop)
        return Where(source=found, tp=tp, slot_rows=slot_rows.get(name))
    return where


def _fused_slot_rows(spec, tp_size: int) -> dict[str, list[int]]:
    """canonical q/k/v/gate/up weight or bias -> its rows in the fused parameter a loader
    like vLLM keeps (at tp 1; a rank's fused parameter has rank-local rows: not given)."""
    if tp_size != 1:
        return {}
    out = {}
    for layer in range(spec.num_layers):
        for module, rows in (("self_attn", fused_qkv_rows(spec)), ("mlp", fused_gate_up_rows(spec))):
            for part, (start, stop) in rows.items():
                for suffix in ("weight", "bias"):
                    out[f"model.layers.{layer}.{module}.{part}.{suffix}"] = [start, stop]
    return out


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
            "signature": signature(nodeid, [d.to_json() for d in divergences]),
            "severity": worst(d.severity for d in divergences),
            "divergences": [d.to_json() for d in divergences[:12]]})


def _collect(divergences: list[Divergence], prop: str, case, nodeid: str) -> None:
    """--baseline-write: every divergence not seen yet in this test and kind of case, as a
    record the baseline is written from at the end of the run (the kinds of case a
    divergence met narrow its entry's `case`); nothing fails, so every example runs."""
    run = current()
    unseen, features = [], case_features(case)
    for divergence in divergences:
        key = (nodeid, str(sorted(divergence_key(divergence.to_json()).items())),
               str(sorted(features.items())))
        if key not in run.collected:
            run.collected.add(key)
            unseen.append(divergence)
    if unseen:
        run.records.write({
            "type": "divergence", "stage": "collected", "property": prop, "test": nodeid,
            "loader": run.loader_name, "case": case.summary(), "rerun": rerun_command(),
            "features": features, "severity": worst(d.severity for d in unseen),
            "signature": signature(nodeid, [d.to_json() for d in unseen]),
            "divergences": [d.to_json() for d in unseen]})


def fail_on(divergences: list[Divergence], prop: str, case,
            directory: Path | None = None, title: str = "") -> None:
    """Raise a readable AssertionError (and write the record, on the final replay).
    Divergences the run's baseline knows are recorded as known and do not fail: the
    example fails only on what is new, so a known bug never masks another. So fail_on may
    return after divergences: a caller that cannot go on after one returns itself."""
    __tracebackhide__ = True
    run, nodeid = current(), _nodeid()
    run.example_case[nodeid], run.property_name[nodeid] = case, prop
    # what the test's candidate calls did to the process (guard.py), reported once: those an
    # outcome comparison already put among `divergences` are not added again
    divergences = list(divergences)
    divergences = [d for d in run.unreported_effects.pop(nodeid, [])
                   if not any(d is given for given in divergences)] + divergences
    if not divergences:
        return
    known: dict[str, list[Divergence]] = {}
    if run.baseline is not None:
        known, divergences = run.baseline.split(nodeid, divergences, case_features(case))
        _record_known(known, prop, case, nodeid)
        if not divergences:
            return
    if run.baseline_write:
        _collect(divergences, prop, case, nodeid)
        return
    first = nodeid not in run.first_failure
    run.first_failure.setdefault(nodeid, run.examples.get(nodeid, 0))
    command = rerun_command(divergences=divergences)
    divergences = ordered_by_cause(divergences)
    message = failure_message(run.loader_name, prop, case.summary(), divergences, command,
                              title=title, known=sorted(known),
                              baseline=str(run.baseline.path) if known else "")
    try:
        final = current_build_context().is_final
    except InvalidArgument:  # a plain (parametrized) test, not under Hypothesis
        final = True
    if final or first:
        # Written when first found (so a killed run keeps it) and again once shrunk.
        record = DivergenceRecord(
            property=prop, test=nodeid, loader=run.loader_name,
            stage="final" if final else "first", severity=worst(d.severity for d in divergences),
            case=case.summary(), rerun=command,
            signature=signature(nodeid, [d.to_json() for d in divergences]),
            divergences=divergences, headline=divergences[0].headline, root_cause=0,
            spec=case.plan.spec.to_dict(), checkpoint=case.plan.summary(),
            options=case.options.summary(), plan=repr(case.plan),
            examples_before_failure=run.first_failure[nodeid])
        if directory is not None and directory.exists():
            target = run.records.repro_directory / repro_slug(nodeid)
            left_out = save_checkpoint(directory, target)
            if left_out:
                record.repro_not_copied = left_out
            (target / CASE_FILE).write_text(json.dumps({
                "property": prop, "loader": run.loader_name, "spec": case.plan.spec.to_dict(),
                "options": vars(case.options)}, indent=1))
            record.repro_checkpoint = str(target)
            record.repro_command = _as_invoked(
                [_from_here(Path(sys.executable)), "-m", "conformance.repro", str(target),
                 "--loader", run.loader_name]) + _replay_options(divergences)
        run.records.write(record.to_json())
    raise failure_type(divergences[0].finding)(message)


def outcome_divergences(case: LoadCase, expected: Outcome, found: Outcome,
                        directory: Path | None) -> list[Divergence]:
    """compare_outcomes for a case, with quantized matrices reported one per matrix."""
    divergences = compare_outcomes(expected, found, name_sets=name_sets(current().capabilities),
                                   device=case.options.device,
                                   where=provenance(case, directory))
    if expected.result is not None and found.result is not None:  # the objects, not the report
        divergences += unreported_sharing(found.result.state, found.result.aliases)
    return refine_quantized(divergences, expected.result and expected.result.state,
                            found.result and found.result.state, case.plan.spec, case.options)


def check_case(case: LoadCase, prop: str) -> tuple[Outcome, Outcome]:
    """The standard property: the candidate's outcome equals the reference's."""
    __tracebackhide__ = True
    count_example()
    with written(case.plan) as directory:
        expected, found = load_both(case, directory)
        fail_on(outcome_divergences(case, expected, found, directory), prop, case, directory)
    return expected, found


def fail_if_states_differ(first: Outcome, second: Outcome, prop: str, case: LoadCase,
                          title: str) -> None:
    """Two loads by the candidate that must agree bit for bit (when both loaded)."""
    __tracebackhide__ = True
    if first.result is not None and second.result is not None:
        divergences = compare_states(first.result.state, second.result.state,
                                     where=lambda n: title)
        fail_on(refine_quantized(divergences, first.result.state, second.result.state,
                                 case.plan.spec, case.options), prop, case, title=title)
