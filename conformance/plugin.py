"""pytest plugin of the suite: options, profiles, the loader (validated once, up front), the
capability table in the report header, capability-based skips, the run's id and seeds, and
the verdict against a known-divergence baseline.

Installed, it is the `pytest11` entry point `conformance.plugin`, so `pytest --pyargs
conformance --loader NAME` works from any directory; in a checkout that is not installed,
`conformance/conftest.py` loads it by the same name (pytest registers a name once). An
installed plugin is loaded by every pytest run in that environment: it adds its options
always, and its hooks only to a run that collects the suite (`_runs_the_suite`)."""

from __future__ import annotations

import functools
import os
import random
import sys
from pathlib import Path

import pytest

from conformance.profiles import DEFAULT_PROFILE, register_profiles

register_profiles()  # before Hypothesis' own plugin reads --hypothesis-profile


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loadcheck")
    group.addoption("--loader", default=None,
                    help="loader under test: reference, an adapter name, a module, or module:attr")
    group.addoption("--device", default=None, help="device to load onto (cpu, cuda, cuda:1)")
    group.addoption("--records", default=None, help="directory for divergence records")
    group.addoption("--html-report", default=None, metavar="PATH",
                    help="write the self-contained HTML divergence report here at the end")
    group.addoption("--isolate", action="store_true", default=False,
                    help="run candidate calls in a child process: a crash costs one example")
    group.addoption("--isolate-memory", type=int, default=4096, metavar="MIB",
                    help="with --isolate: address space a candidate call may add, in MiB "
                         "(default 4096: two xdist workers fit a 24 GiB runner; 0: no limit); "
                         "a call that exceeds it is a crash naming the limit")
    group.addoption("--candidate-timeout", type=float, default=None,
                    help="seconds a candidate call may take before it counts as a hang "
                         "(default 60)")
    group.addoption("--max-hung-tests", type=int, default=5, metavar="N",
                    help="after the candidate hung in N tests (counted over the whole run, all "
                         "xdist workers), every later test that calls it fails at once as not "
                         "tested, so an always-hanging candidate costs about N timeouts, not "
                         "one per test (default 5; 0: no limit)")
    group.addoption("--baseline", default=None, metavar="FILE",
                    help="known divergences (TOML): matched ones are reported as known, not "
                         "failed; a built-in adapter's name picks its shipped baseline")
    group.addoption("--baseline-strict", action="store_true", default=False,
                    help="also fail the run when a baseline entry no longer reproduces (fixed)")
    group.addoption("--baseline-write", default=None, metavar="FILE",
                    help="adopt: run every example without failing, and write (or extend) "
                         "FILE with an entry for every divergence it does not know yet")
    parser.addini("loadcheck_loader", "default for --loader", default="reference")
    parser.addini("loadcheck_device", "default for --device", default="cpu")
    parser.addini("loadcheck_records", "default for --records", default="results")
    parser.addini("loadcheck_candidate_timeout", "default for --candidate-timeout", default="60")


def _seed(config: pytest.Config, derandomized: bool) -> int | None:
    """The run's seed: --hypothesis-seed, else (for random profiles) one chosen by the
    controller and handed to every xdist worker, so one re-run command fits all."""
    if derandomized:  # every run draws the same examples; a seed would change nothing
        return None
    given = config.getoption("hypothesis_seed", None)
    if given is not None:
        return int(given)
    worker_input = getattr(config, "workerinput", None)
    if worker_input and "loadcheck_seed" in worker_input:
        return worker_input["loadcheck_seed"]
    return random.randrange(2**32)


def _from_controller(config: pytest.Config, key: str, make):
    """A value the xdist controller chose and handed to its workers (or chooses now)."""
    worker_input = getattr(config, "workerinput", None)
    if worker_input and key in worker_input:
        return worker_input[key]
    return make()


def _check_device(device: str) -> None:
    """A CUDA run on a machine without a usable GPU fails up front (exit 4): a matrix cell
    whose every property skipped must never look like a pass."""
    if not device.startswith("cuda"):
        return
    import torch
    if not torch.cuda.is_available():
        raise pytest.UsageError(
            f"--device {device}: no CUDA device on this machine (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or 'not built in'}); nothing would be tested")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise pytest.UsageError(f"--device {device}: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")


def _baseline(config: pytest.Config, loader_name: str):
    from conformance.baseline import Baseline, BaselineError, load_baseline, shipped_baseline
    given = config.getoption("--baseline")
    write = config.getoption("--baseline-write")
    if write is not None:
        if given is not None:
            raise pytest.UsageError("--baseline-write FILE extends FILE: give it alone")
        try:
            return load_baseline(write) if Path(write).exists() else Baseline(
                Path(write), loader=loader_name)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    if given is None:
        if config.getoption("--baseline-strict"):
            raise pytest.UsageError("--baseline-strict needs --baseline FILE")
        return None
    path = Path(given)
    if not path.exists() and shipped_baseline(given) is not None:
        path = shipped_baseline(given)
    try:
        return load_baseline(path)
    except BaselineError as exc:
        raise pytest.UsageError(str(exc)) from None


def _runs_the_suite(config: pytest.Config) -> bool:
    """Whether this run collects the suite: an argument inside this package (a path, or with
    --pyargs a `conformance...` name). An xdist worker follows its controller, which hands
    it the seed only when the suite runs."""
    worker_input = getattr(config, "workerinput", None)
    if worker_input is not None:
        return "loadcheck_seed" in worker_input
    suite = Path(__file__).resolve().parent
    for arg in config.args:
        target = arg.split("::")[0]
        if config.option.pyargs and target.split(".")[0] == suite.name:
            return True
        path = (config.invocation_params.dir / target).resolve()
        if path == suite or suite in path.parents:
            return True
    return False


@pytest.hookimpl(trylast=True)  # after Hypothesis' plugin, which forces --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import core, settings

    from conformance.loaders import LoaderResolutionError, resolve
    from conformance.records import RecordWriter, new_run_id, replace_cell, run_metadata
    from conformance.session import RunConfig, configure

    if not _runs_the_suite(config):
        # Not the suite (e.g. the project's own tests in an environment where loadcheck is
        # installed): keep the options, drop every hook, so nothing is configured or recorded.
        config.pluginmanager.unregister(sys.modules[__name__])
        return
    config.addinivalue_line("markers", "requires(*capabilities): skip unless the loader "
                            "claims every capability")
    if getattr(config.option, "tbstyle", None) == "auto":
        # A failure's message says what diverged, where and how to replay it: pytest's
        # default would print the whole property's source above it. --tb=long still does.
        config.option.tbstyle = "short"
    # Load the profile here: Hypothesis' own plugin may configure after us, and the seed
    # below depends on whether the profile is derandomized.
    settings.load_profile(config.getoption("hypothesis_profile", None) or DEFAULT_PROFILE)
    profile = settings.get_current_profile_name()
    name = config.getoption("--loader") or config.getini("loadcheck_loader")
    try:
        candidate = resolve(name)
    except LoaderResolutionError as exc:
        raise pytest.UsageError(str(exc)) from None
    device = config.getoption("--device") or config.getini("loadcheck_device")
    _check_device(device)
    baseline = _baseline(config, name)
    seed = _seed(config, settings.default.derandomize)
    # Hypothesis keeps no example database under a forced global seed, so a failure found
    # tonight would not replay first tomorrow: each test gets its own seed derived from the
    # run's instead (conformance.harness.seed_for), which keeps the database on.
    core.global_force_seed = None
    config._loadcheck_seed = seed
    run_id = _from_controller(config, "loadcheck_run_id", new_run_id)
    config._loadcheck_run_id = run_id
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if worker != "main":
        import torch
        # Cases are tiny: intra-op threads only oversubscribe the cores xdist already uses.
        torch.set_num_threads(1)
    records = RecordWriter(Path(config.getoption("--records") or config.getini("loadcheck_records")),
                           worker, run_id)
    timeout = config.getoption("--candidate-timeout") or float(
        config.getini("loadcheck_candidate_timeout"))
    isolated = config.getoption("--isolate")
    if isolated:
        from conformance.survival import IsolatedLoader
        candidate = IsolatedLoader(name, candidate, timeout,
                                   config.getoption("--isolate-memory") or None)
    configure(RunConfig(loader_name=name, candidate=candidate, device=device, profile=profile,
                        seed=seed, records=records, timeout=timeout, isolated=isolated,
                        max_hung_tests=max(0, config.getoption("--max-hung-tests")),
                        baseline=baseline, baseline_strict=config.getoption("--baseline-strict"),
                        baseline_write=config.getoption("--baseline-write") is not None))
    config._loadcheck_metadata = run_metadata(
        loader=name, loader_version=str(candidate.version), device=device, profile=profile,
        seed=seed, baseline=str(baseline.path) if baseline else None,
        records=records.directory)
    config._loadcheck_replaced = []
    if _controller(config) and worker == "main":
        config._loadcheck_replaced = replace_cell(records.directory,
                                                  config._loadcheck_metadata, run_id)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist: one seed and one run id for the whole run
    node.workerinput["loadcheck_seed"] = node.config._loadcheck_seed
    node.workerinput["loadcheck_run_id"] = node.config._loadcheck_run_id


def pytest_sessionstart(session: pytest.Session) -> None:
    from conformance.session import current
    current().records.write(session.config._loadcheck_metadata)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from reference.contract import CAPABILITIES
    from conformance.session import current
    run = current()
    loader = run.candidate
    claimed = run.capabilities
    lines = [f"loadcheck: loader {run.loader_name!r} ({type(loader).__module__}."
             f"{type(loader).__qualname__}) version {loader.version}; device {run.device}; "
             f"hypothesis profile {run.profile!r}, seed "
             f"{run.seed if run.seed is not None else 'derandomized'}; records "
             f"{run.records.directory}/ (run {run.records.run_id}); candidate timeout "
             f"{run.timeout:g} s" + ("; isolated in a child process" if run.isolated else "")]
    if run.baseline is not None:
        lines.append(f"loadcheck baseline: {run.baseline.path} ({len(run.baseline.entries)} "
                     f"known divergences{', strict' if run.baseline_strict else ''})")
    if config._loadcheck_replaced:
        lines.append(f"loadcheck: replaced the records of earlier run(s) of this cell: "
                     f"{', '.join(config._loadcheck_replaced)}")
    if getattr(loader, "withheld", None):
        lines.append(f"loadcheck --isolate: withheld (they need the live model across calls; "
                     f"their properties skip): {', '.join(loader.withheld)}")
    lines.append("loadcheck capabilities: " + "  ".join(
        f"{'+' if cap in claimed else '-'}{cap}" for cap in CAPABILITIES))
    if loader.variants:
        lines.append("loadcheck variants: " + ", ".join(
            f"{k}={v}" for k, v in sorted(dict(loader.variants).items())))
    if run.support.unsupported():  # declared model support: like unclaimed capabilities
        lines.append("loadcheck model support: not generated: "
                     + ", ".join(run.support.unsupported()))
    return lines


def pytest_runtest_setup(item: pytest.Item) -> None:
    from conformance.session import current
    run = current()
    for marker in item.iter_markers("requires"):
        lacking = [cap for cap in marker.args if cap not in run.capabilities]
        withheld = [cap for cap in lacking if cap in getattr(run.candidate, "withheld", ())]
        if withheld:
            pytest.skip(f"--isolate: {', '.join(withheld)} of loader {run.loader_name!r} "
                        f"not offered across the process boundary (the call needs the live "
                        f"model of an earlier load); run without --isolate to test it")
        if lacking:
            pytest.skip(f"loader {run.loader_name!r} does not claim {', '.join(lacking)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Random profiles: the test's own seed, derived from the run's (see pytest_configure).
    Each example ends by reporting what its candidate calls did to the process and no
    fail_on reported (a Hypothesis test's inner function is wrapped for the call), and so
    does the test (a state machine, a parametrized test)."""
    from conformance.harness import drop_leftover_effects, report_leftover_effects, seeded
    handle = getattr(getattr(item, "obj", None), "hypothesis", None)
    inner = getattr(handle, "inner_test", None)
    if inner is not None:
        @functools.wraps(inner)
        def example(*args, **kwargs):
            __tracebackhide__ = True
            try:
                value = inner(*args, **kwargs)
            except BaseException:
                drop_leftover_effects()
                raise
            report_leftover_effects()
            return value
        handle.inner_test = example
    try:
        with seeded(item):
            try:
                value = yield
            except BaseException:
                drop_leftover_effects()
                raise
            report_leftover_effects()
            return value
    finally:
        if inner is not None:
            handle.inner_test = inner


def _controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_collection_finish(session: pytest.Session) -> None:
    """The start of completeness: the tests this run means to run (a controller without
    xdist; with xdist, the first worker's collection, below)."""
    if _controller(session.config) and "PYTEST_XDIST_WORKER" not in os.environ:
        from conformance.completeness import write_collected
        write_collected(session.config, [item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids) -> None:
    from conformance.completeness import write_collected
    write_collected(node.config, list(ids))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """One outcome line per test (from the controller), so a report can count passes; a
    failure the suite did not record as a divergence, and a worker that died, are crash
    records (conformance.completeness)."""
    from conformance.completeness import record_unjudged, record_worker_crash
    from conformance.session import current
    record_unjudged(report)  # in the process that ran the test: it knows what it recorded
    if "PYTEST_XDIST_WORKER" in os.environ:
        return  # the controller receives every worker's reports and writes them once
    if report.when == "???":  # xdist's report for the test a dying worker was running
        record_worker_crash(report)
    if report.when in ("call", "???") or (report.when == "setup" and report.outcome != "passed"):
        run = current()
        run.outcomes[report.nodeid] = report.outcome
        run.records.write({"type": "outcome", "test": report.nodeid, "outcome": report.outcome})


def pytest_sessionfinish(session: pytest.Session) -> None:
    from conformance.session import current
    from generators.specs import NOT_GENERATED
    run = current()
    if NOT_GENERATED:  # every process, for what it drew: the report adds them up
        run.records.write({"type": "support", "not_generated": dict(NOT_GENERATED)})
    if not _controller(session.config):
        return
    if run.baseline_write:
        from conformance.baseline.write import extend_from_run
        session.config._loadcheck_verdict = [extend_from_run(run.baseline, run.records)]
        session.exitstatus = 0 if session.exitstatus in (0, 1) else session.exitstatus
    elif run.baseline is not None:
        from conformance.baseline.verdict import judge
        hits = [(r["entry"], r["test"]) for r in run.records.read_own()
                if r.get("type") == "known"]
        verdict = judge(run.baseline, run.outcomes, hits)
        run.records.write(verdict.to_record(run.baseline, run.baseline_strict))
        session.config._loadcheck_verdict = verdict.lines(run.baseline, run.baseline_strict)
        if run.baseline_strict and verdict.fixed and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    from conformance.completeness import unreported
    from conformance.harness import hang_budget
    hang_budget(run).path.unlink(missing_ok=True)  # it lived for the run only
    missing = unreported(session.config, run.outcomes)
    run.records.write({"type": "end", "exitstatus": int(session.exitstatus),
                       "tests": len(run.outcomes), "unreported": missing})
    session.config._loadcheck_failures = failure_lines(run.records.read_own())
    path = session.config.getoption("--html-report")
    if path:
        from reports.html import build_report
        session.config._loadcheck_report = build_report([run.records.directory], path)


def failure_lines(records) -> list[str]:
    """One line per failing test of this run, worst first: severity, test, property and
    the root cause's headline (pytest's own short summary cuts its line at the terminal's
    width; this one is whole)."""
    from reports.identity import short_test
    from reports.schema import severity_rank
    final: dict[str, dict] = {}
    for record in records:
        if record.get("type") in ("divergence", "crash") and record.get("stage") in ("first",
                                                                                 "final"):
            if record["stage"] == "final" or record["test"] not in final:
                final[record["test"]] = record
    ordered = sorted(final.values(), key=lambda r: (severity_rank(r.get("severity")),
                                                    r.get("test", "")))
    return [f"[{r.get('severity')}] {short_test(r['test'])}: {r.get('property')}: "
            f"{r.get('headline') or ''}" for r in ordered]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    failures = getattr(config, "_loadcheck_failures", [])
    if failures:
        terminalreporter.section(f"loadcheck: {len(failures)} failing test"
                                 f"{'s' if len(failures) > 1 else ''}, root cause first")
        for line in failures:
            terminalreporter.write_line(line)
    for line in getattr(config, "_loadcheck_verdict", []):
        terminalreporter.write_line(line)
    out = getattr(config, "_loadcheck_report", None)
    if out is not None:
        terminalreporter.write_line(f"loadcheck: HTML report written to {out}")
