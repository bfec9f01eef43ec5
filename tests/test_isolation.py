"""--isolate that holds: capabilities that need the live model are withheld up front (their
properties skip, saying why) instead of failing; a call's leftover processes are killed;
a per-call memory limit turns a memory hog into a crash naming the limit; the parent never
reads a FIFO its child left; and a hanging candidate costs each test one timeout, so a run
ends in bounded time. The candidates are in tests/misbehaving.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from conformance.survival import _read_result, _read_small
from reports.records import read_runs
from tests.misbehaving import GRANDCHILD
from tests.mutation import run_suite

TWO_FILES = ("conformance/test_tying.py", "conformance/test_sharding.py")


def test_isolated_reference_withholds_what_needs_the_live_model(tmp_path):
    run = run_suite("reference", "conformance/test_bytes.py", "conformance/test_reload.py",
                    "conformance/test_tying.py", "--isolate", "-rs", records=tmp_path)
    assert run.returncode == 0, run.output[-3000:]
    assert "--isolate: bytes of loader 'reference' not offered" in run.output
    assert "--isolate: reload of loader 'reference' not offered" in run.output


def _grandchildren() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "^" + " ".join(GRANDCHILD) + "$"],
                           capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.fixture
def no_grandchildren_left():
    before = set(_grandchildren())
    yield before
    for pid in set(_grandchildren()) - before:  # the in-process run leaves them, by design
        os.kill(pid, signal.SIGKILL)


def test_processes_a_call_leaves_are_killed_isolated_and_reported_in_process(
        tmp_path, no_grandchildren_left):
    isolated = run_suite("tests.misbehaving:spawns_children", *TWO_FILES, "--isolate",
                         records=tmp_path / "isolated")
    assert isolated.returncode == 0, isolated.output[-3000:]
    assert set(_grandchildren()) <= no_grandchildren_left
    in_process = run_suite("tests.misbehaving:spawns_children", *TWO_FILES,
                           records=tmp_path / "in-process")
    assert in_process.returncode == 1
    (result,) = read_runs([tmp_path / "in-process"])
    kinds = {d["kind"] for r in result.divergences for d in r["divergences"]}
    assert kinds == {"process"}, kinds


def test_a_process_that_leaves_the_calls_group_is_killed_isolated(tmp_path,
                                                                 no_grandchildren_left):
    """setsid() takes a helper out of the call's process group; the isolated server is a
    subreaper, so the orphan comes to it and is killed after the call."""
    run = run_suite("tests.misbehaving:escapes_its_group", "conformance/test_tying.py",
                    "--isolate", records=tmp_path)
    assert run.returncode == 0, run.output[-3000:]
    assert set(_grandchildren()) <= no_grandchildren_left


def test_a_call_over_the_memory_limit_is_a_crash_naming_the_limit(tmp_path):
    run = run_suite("tests.misbehaving:allocates", "conformance/test_tying.py", "--isolate",
                    "--isolate-memory=512", records=tmp_path)
    (result,) = read_runs([tmp_path])
    (record,) = result.divergences
    assert record["severity"] == "crash", run.output[-3000:]
    assert "--isolate-memory limit of 512 MiB" in record["divergences"][0]["message"]


@pytest.mark.parametrize("isolate", [False, True])
def test_a_hanging_candidate_costs_each_test_one_timeout(tmp_path, isolate):
    run = run_suite("tests.misbehaving:hangs", *TWO_FILES, "--candidate-timeout=1",
                    *(["--isolate"] if isolate else []), records=tmp_path)
    (result,) = read_runs([tmp_path])
    assert result.complete and len(result.collected) == 3
    assert {d["test"] for d in result.divergences} == set(result.collected)
    for record in result.divergences:
        assert record["severity"] == "hang"
        message = record["divergences"][0]["message"]
        assert "within 1 s, the --candidate-timeout in force" in message
        assert "remaining examples are skipped" in message
    # the root-cause section names each test once as hung (whatever the terminal width)
    hung = re.findall(r"^\[hang\] (\S+?): ", run.output, flags=re.M)
    assert sorted(hung) == sorted(set(hung)) and len(hung) == 3, run.output[-3000:]


def test_the_parent_never_reads_a_fifo_its_child_left(tmp_path):
    os.mkfifo(tmp_path / "result.json")
    with pytest.raises(Exception, match="is a FIFO"):
        _read_small(tmp_path / "result.json")
    (tmp_path / "result.json").unlink()
    (tmp_path / "result.json").write_text('{"loaded": [], "missing": [], "unexpected": [], '
                                          '"ignored": [], "aliases": {}, "placement": {}}')
    os.mkfifo(tmp_path / "state.safetensors")
    with pytest.raises(Exception, match="is a FIFO"):
        _read_result(tmp_path)


def test_after_max_hung_tests_the_rest_stop_at_once(tmp_path):
    """--max-hung-tests 1: the first hung test costs a timeout and records the hang; the
    other tests that call the candidate fail at once, saying they were not tested."""
    run = run_suite("tests.misbehaving:hangs", *TWO_FILES, "--candidate-timeout=1",
                    "--max-hung-tests=1", records=tmp_path)
    (result,) = read_runs([tmp_path])
    assert result.complete and len(result.collected) == 3
    hangs = [r for r in result.divergences if r["severity"] == "hang" and r.get("type") != "crash"]
    assert len(hangs) == 1, [(r["type"], r["severity"]) for r in result.divergences]
    assert run.output.count("--max-hung-tests budget (1)") >= 2, run.output[-3000:]


def test_the_hang_budget_is_shared_by_the_runs_workers(tmp_path, monkeypatch):
    """Two xdist workers of one run share one budget: once one of them used it up, a test
    the other runs stops before calling the candidate (it cost one timeout per worker)."""
    from conformance.harness import candidate_call, hang_budget
    from conformance.records import RecordWriter
    from conformance import session
    from conformance.session import RunConfig, configure
    from conformance.survival import HungTestStopped
    from reference.loading import ReferenceLoader
    previous = session._current

    def worker(name: str) -> RunConfig:
        return RunConfig(loader_name="reference", candidate=ReferenceLoader(), device="cpu",
                         profile="pr", seed=None, max_hung_tests=1, timeout=0.2,
                         records=RecordWriter(tmp_path, name, "run-1"))
    first, second = worker("gw0"), worker("gw1")
    try:
        configure(first)
        monkeypatch.setenv("PYTEST_CURRENT_TEST", "conformance/test_a.py::test_one (call)")
        assert candidate_call(lambda: __import__("time").sleep(5)).family == "hang"
        configure(second)
        monkeypatch.setenv("PYTEST_CURRENT_TEST", "conformance/test_b.py::test_two (call)")
        with pytest.raises(HungTestStopped, match=r"already hung in 1 tests of this run "
                                                  r"\(conformance/test_a.py::test_one\)"):
            candidate_call(lambda: None)
        assert hang_budget(second).hung() == ["conformance/test_a.py::test_one"]
    finally:
        configure(previous)


def test_the_isolated_servers_start_up_is_not_a_calls_timeout(tmp_path, monkeypatch):
    """Start-up (interpreter, torch, the candidate's import, a warm-up load) took a minute
    and more on a loaded runner, and every first call of a worker's server was a false hang.
    Here the import alone outlasts the call's timeout and its grace."""
    from conformance import survival
    from generators.checkpoints import CheckpointPlan
    from reference.contract import LoadOptions, ModelSpec
    from reference.loading import ReferenceLoader
    monkeypatch.setattr(survival, "_GRACE", 0.5)
    spec = ModelSpec(family="llama")
    directory = CheckpointPlan(spec, shards=1, disk_dtype="float32").write(tmp_path / "ckpt")
    import tests.slow_to_start as slow
    isolated = survival.IsolatedLoader("tests.slow_to_start:loader", slow.loader, timeout=1.0)
    try:
        result = isolated.load(str(directory), spec, LoadOptions())
    finally:
        isolated._child.kill()
    want = ReferenceLoader().load(str(directory), spec, LoadOptions())
    assert sorted(result.state) == sorted(want.state)
