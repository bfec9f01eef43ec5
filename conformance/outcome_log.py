"""A pytest plugin for `./run gpu-check`: each test's outcome as one JSON line, written the
moment it is known, so a step interrupted at its budget still says which tests finished
(pytest writes its JUnit XML only at the end, and xdist's controller does not get there when
interrupted). Use: `pytest -p conformance.outcome_log --outcome-log PATH ...`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

__all__ = ["read_outcome_log"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--outcome-log", default=None, metavar="PATH",
                     help="append each test's outcome to PATH as a JSON line")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--outcome-log")
    if path and not hasattr(config, "workerinput"):  # the controller sees every report
        config.pluginmanager.register(_OutcomeLog(Path(path)), "loadcheck-outcome-log")


class _OutcomeLog:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.outcome == "passed":
            return
        outcome = report.outcome if report.when == "call" or report.skipped else "error"
        line = {"test": report.nodeid, "outcome": outcome, "when": report.when,
                "duration": round(report.duration, 3), "message": _message(report)}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()


def _message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or (report.longreprtext if report.failed else "")
    return text.strip().splitlines()[0] if text.strip() else ""


def read_outcome_log(path: Path) -> dict[str, dict]:
    """nodeid -> its last line (a teardown error after a pass wins); {} without a file; a
    line cut by a killed run is skipped."""
    out: dict[str, dict] = {}
    if not Path(path).is_file():
        return out
    for text in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and "test" in line:
            out[line["test"]] = line
    return out
