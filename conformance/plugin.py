"""pytest plugin of the suite: options, profiles, the loader (validated once, up front), the
capability table in the report header, and capability-based skips.

Installed, it is the `pytest11` entry point `conformance.plugin`, so `pytest --pyargs
conformance --loader NAME` works from any directory; in a checkout that is not installed,
`conformance/conftest.py` loads it by the same name (pytest registers a name once). An
installed plugin is loaded by every pytest run in that environment: it adds its options
always, and its hooks only to a run that collects the suite (`_runs_the_suite`)."""

from __future__ import annotations

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
    group.addoption("--candidate-timeout", type=float, default=None,
                    help="seconds a candidate call may take before it counts as a hang "
                         "(default 60)")
    parser.addini("loadcheck_loader", "default for --loader", default="reference")
    parser.addini("loadcheck_device", "default for --device", default="cpu")
    parser.addini("loadcheck_records", "default for --records", default="results")
    parser.addini("loadcheck_candidate_timeout", "default for --candidate-timeout", default="60")


def _seed(config: pytest.Config, derandomized: bool) -> int | None:
    """The run's seed: --hypothesis-seed, else (for random profiles) one chosen by the
    controller and handed to every xdist worker, so one re-run command fits all."""
    given = config.getoption("hypothesis_seed", None)
    if given is not None:
        return int(given)
    if derandomized:
        return None
    worker_input = getattr(config, "workerinput", None)
    if worker_input and "loadcheck_seed" in worker_input:
        return worker_input["loadcheck_seed"]
    return random.randrange(2**32)


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


def pytest_configure(config: pytest.Config) -> None:
    if not _runs_the_suite(config):
        # Not the suite (e.g. the project's own tests in an environment where loadcheck is
        # installed): keep the options, drop every hook, so nothing is configured or recorded.
        config.pluginmanager.unregister(sys.modules[__name__])
        return
    from hypothesis import core, settings

    from conformance.loaders import LoaderResolutionError, resolve
    from conformance.records import RecordWriter, run_metadata
    from conformance.session import RunConfig, configure

    config.addinivalue_line("markers", "requires(*capabilities): skip unless the loader "
                            "claims every capability")
    # Load the profile here: Hypothesis' own plugin may configure after us, and the seed
    # below depends on whether the profile is derandomized.
    settings.load_profile(config.getoption("hypothesis_profile", None) or DEFAULT_PROFILE)
    profile = settings.get_current_profile_name()
    name = config.getoption("--loader") or config.getini("loadcheck_loader")
    try:
        candidate = resolve(name)
    except LoaderResolutionError as exc:
        raise pytest.UsageError(str(exc)) from None
    seed = _seed(config, settings.default.derandomize)
    if seed is not None:
        core.global_force_seed = seed
    config._loadcheck_seed = seed
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if worker != "main":
        import torch
        # Cases are tiny: intra-op threads only oversubscribe the cores xdist already uses.
        torch.set_num_threads(1)
    records = RecordWriter(Path(config.getoption("--records") or config.getini("loadcheck_records")),
                           worker)
    device = config.getoption("--device") or config.getini("loadcheck_device")
    timeout = config.getoption("--candidate-timeout") or float(
        config.getini("loadcheck_candidate_timeout"))
    isolated = config.getoption("--isolate")
    if isolated:
        from conformance.survival import IsolatedLoader
        candidate = IsolatedLoader(name, candidate, timeout)
    configure(RunConfig(loader_name=name, candidate=candidate, device=device, profile=profile,
                        seed=seed, records=records, timeout=timeout, isolated=isolated))
    config._loadcheck_metadata = run_metadata(
        loader=name, loader_version=str(candidate.version), device=device, profile=profile,
        seed=seed)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist: one seed for the whole run
    node.workerinput["loadcheck_seed"] = node.config._loadcheck_seed


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
             f"{run.records.directory}/; candidate timeout {run.timeout:g} s"
             + ("; isolated in a child process" if run.isolated else "")]
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
        if lacking:
            pytest.skip(f"loader {run.loader_name!r} does not claim {', '.join(lacking)}")
    if run.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            pytest.skip(f"--device {run.device}: no CUDA device on this machine")


def _controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """One outcome line per test (from the controller), so a report can count passes."""
    from conformance.session import current
    if "PYTEST_XDIST_WORKER" in os.environ:
        return  # the controller receives every worker's reports and writes them once
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        current().records.write({"type": "outcome", "test": report.nodeid,
                                 "outcome": report.outcome})


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--html-report")
    if path and _controller(session.config):
        from conformance.session import current
        from reports.html import build_report
        out = build_report([current().records.directory], path)
        session.config._loadcheck_report = out


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    out = getattr(config, "_loadcheck_report", None)
    if out is not None:
        terminalreporter.write_line(f"loadcheck: HTML report written to {out}")
