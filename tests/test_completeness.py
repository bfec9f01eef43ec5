"""A run never looks cleaner than it was: a candidate that kills its worker, a run killed
from outside, and a candidate that raises what is not an Exception each end as crash
records and an incomplete (or failed) run in the summary and the report, never as a pass.
The misbehaving candidates are in tests/misbehaving.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conformance.records import RecordWriter
from reports.html import build_report
from reports.records import read_runs
from reports.summary import run_state, text_summary
from tests.mutation import ROOT, run_suite

THREE_TESTS = ("conformance/test_tying.py", "conformance/test_sharding.py")


def _report(tmp_path, records) -> str:
    return build_report([records], tmp_path / "report.html").read_text()


def test_collected_tests_that_never_reported_make_a_finished_run_incomplete(tmp_path):
    writer = RecordWriter(tmp_path, "main", "20261130T000000-aaaaaa")
    writer.write({"type": "run", "loader": "x", "device": "cpu", "torch": "2.13.0"})
    writer.write({"type": "collected", "tests": ["t::a", "t::b"], "count": 2})
    writer.write({"type": "outcome", "test": "t::a", "outcome": "passed"})
    writer.write({"type": "end", "exitstatus": 0, "tests": 1})
    (run,) = read_runs([tmp_path])
    assert run.unreported == ["t::b"] and run_state(run) == "incomplete"
    assert "1 of 2 collected tests never reported (t::b)" in text_summary([run])
    writer.write({"type": "outcome", "test": "t::b", "outcome": "passed"})
    assert run_state(read_runs([tmp_path])[0]) == "pass"


def test_a_segfaulting_candidate_in_process_is_a_crash_and_an_incomplete_run(tmp_path):
    run = run_suite("tests.misbehaving:segfaults", *THREE_TESTS, "-n", "2",
                    "--max-worker-restart=0", records=tmp_path)
    crashes = [r for r in run.records if r.get("type") == "crash"]
    assert crashes and all(r["cause"] == "worker died" and "::test_" in r["test"]
                           for r in crashes), run.output[-3000:]
    assert "segfault" in crashes[0]["divergences"][0]["message"]
    (result,) = read_runs([tmp_path])
    assert result.collected and len(result.collected) == 3
    assert run_state(result) == "incomplete" and result.unreported, text_summary([result])
    assert "INCOMPLETE" in text_summary([result])
    html = _report(tmp_path, tmp_path)
    assert "collected tests never reported" in html and "worker process died" in html


def test_a_killed_run_is_incomplete_and_names_what_never_reported(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *THREE_TESTS, "--loader", "reference", "-q",
         "-p", "no:cacheprovider", "--records", str(tmp_path), "--hypothesis-profile=pr"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            lines = "".join(p.read_text() for p in tmp_path.glob("records-*.jsonl"))
            if '"type": "outcome"' in lines:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (result,) = read_runs([tmp_path])
    assert result.end is None and result.collected and len(result.collected) == 3
    assert run_state(result) == "incomplete" and result.unreported
    summary = text_summary([result])
    assert "did not finish" in summary and result.unreported[0] in summary
    assert "did not finish" in _report(tmp_path, tmp_path)


@pytest.mark.parametrize("kind", ["keyboard_interrupt", "system_exit", "generator_exit"])
def test_a_candidate_raising_a_base_exception_is_a_crash_record_and_the_run_goes_on(
        tmp_path, kind):
    run = run_suite(f"tests.misbehaving:{kind}", *THREE_TESTS, records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    (result,) = read_runs([tmp_path])
    assert result.complete and run_state(result) == "fail"
    failed = {o["test"] for o in result.outcomes if o["outcome"] == "failed"}
    recorded = {d["test"] for d in result.divergences}
    assert failed and failed <= recorded, (failed, recorded)
    name = {"keyboard_interrupt": "KeyboardInterrupt", "system_exit": "SystemExit",
            "generator_exit": "GeneratorExit"}[kind]
    crash = next(d for d in result.divergences if d["severity"] == "crash")
    assert f"raised {name}" in json.dumps(crash["divergences"])


@pytest.mark.parametrize("kind, says", [("non_tensors", "is a list, not a torch.Tensor"),
                                        ("meta_tensors", "is on the meta device"),
                                        ("returns_none", "without a divergence record")])
def test_a_result_that_breaks_the_contract_is_recorded(tmp_path, kind, says):
    run = run_suite(f"tests.misbehaving:{kind}", "conformance/test_tying.py", records=tmp_path)
    (result,) = read_runs([tmp_path])
    assert run_state(result) == "fail", run.output[-2000:]
    assert says in json.dumps(result.divergences)


@pytest.mark.parametrize("loader, crashes", [
    ("tests.misbehaving:returns_none", 1), ("tests.mutants.p10_tied_head_overwrites_embedding", 0)])
def test_under_xdist_a_failure_is_judged_once_by_the_worker_that_ran_it(tmp_path, loader,
                                                                         crashes):
    run_suite(loader, "conformance/test_tying.py", "-n", "2", records=tmp_path)
    (result,) = read_runs([tmp_path])
    # each distinct failure (Hypothesis reports one per root-cause finding) recorded once
    findings = [(d["test"], d["divergences"][0].get("finding")) for d in result.divergences]
    assert findings and len(findings) == len(set(findings)), result.divergences
    assert sum(d["type"] == "crash" for d in result.divergences) == crashes
