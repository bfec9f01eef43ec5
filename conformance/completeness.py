"""A run never looks cleaner than it was: what it meant to test, and every way a test can end
without a divergence record, written as records.

- `collected` (controller, once): the tests the run means to run. A report compares it
  with the outcome lines: a test that never reported makes the run incomplete.
- `crash`, cause `worker died` (controller): xdist's report for the test a dying worker
  was running (a segfault, an abort, `os._exit` in process).
- `crash`, cause `unjudged` (the process that ran the test): a test that failed without
  the suite recording a divergence for it (the harness itself raised on what the candidate
  returned, a health check, a plain assertion). The failure's first line is the message.

Both `crash` records carry the fields of a divergence record (property, severity, loader,
divergences), so a report that knows nothing of them still shows them as crashes."""

from __future__ import annotations

import os
from typing import Any

import pytest

__all__ = ["write_collected", "record_unjudged", "record_worker_crash", "unreported"]


def write_collected(config: pytest.Config, tests: list[str]) -> None:
    """The controller's `collected` record, once per run (every xdist worker collects)."""
    if getattr(config, "_loadcheck_collected", None) is not None:
        return
    from conformance.session import current
    config._loadcheck_collected = list(tests)
    current().records.write({"type": "collected", "tests": list(tests), "count": len(tests)})


def unreported(config: pytest.Config, outcomes: dict[str, str]) -> list[str]:
    """Collected tests without an outcome line (the run ended before they reported)."""
    return [t for t in getattr(config, "_loadcheck_collected", None) or [] if t not in outcomes]


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(report.longrepr or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else "(no message)"


def _crash_record(report: pytest.TestReport, cause: str, message: str) -> dict[str, Any]:
    from conformance.harness import rerun_command
    from conformance.session import current
    run = current()
    try:
        rerun = rerun_command(report.nodeid)
    except Exception:  # a re-run line must never cost the record itself
        rerun = None
    return {"type": "crash", "stage": "final", "cause": cause, "test": report.nodeid,
            "case": "(unknown: the test ended before it recorded one)",
            "property": cause, "loader": run.loader_name, "severity": "crash",
            "phase": report.when, "rerun": rerun,
            "divergences": [{"kind": "crash", "subject": report.nodeid, "message": message,
                             "detail": {"cause": cause, "phase": report.when},
                             "severity": "crash"}]}


def record_unjudged(report: pytest.TestReport) -> None:
    """A failed test that wrote no divergence record: the failure is recorded as it is."""
    from conformance.session import current
    run = current()
    if getattr(report, "node", None) is not None:
        return  # xdist's controller, relaying a worker's report: the worker judged it
    if not report.failed or report.when == "???" or (
            report.nodeid in run.first_failure and report.when == "call"):
        return
    message = (f"the test failed in its {report.when} phase without a divergence record "
               f"(the suite could not judge what the candidate did): {_message(report)}")
    run.records.write(_crash_record(report, "unjudged", message))


def record_worker_crash(report: pytest.TestReport) -> None:
    """xdist's report for a test whose worker died: the test, and how xdist saw it."""
    from conformance.session import current
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    message = (f"the worker process died while running this test (a segfault, an abort or "
               f"an exit inside the candidate; run with --isolate to contain it): "
               f"{_message(report)}")
    current().records.write({**_crash_record(report, "worker died", message),
                             "reported_by": worker})
