"""The suite survives its candidates: a run against a loader that hangs on one layout, or
aborts the interpreter on one layout (with --isolate), finishes; the affected properties
fail with `hang` / `crash` records, and every other property still runs and passes. The
resource-hostile checkpoints reach a candidate only where it cannot take the run down."""

from __future__ import annotations

from tests.mutation import run_suite

UNAFFECTED = ("conformance/test_tying.py", "conformance/test_sharding.py")


def _check_survived(run, severity: str, affected: str) -> None:
    assert run.returncode == 1, run.output[-3000:]
    assert "passed" in run.output and "failed" in run.output, run.output[-2000:]
    records = [r for r in run.records if r.get("type") == "divergence"]
    assert any(r["severity"] == severity for r in records), \
        f"no {severity} record: {[r.get('severity') for r in records]}"
    assert all(affected in failed for failed in run.failed), \
        f"only {affected} properties should fail, not {run.failed}"
    for module in UNAFFECTED:
        assert not any(module in failed for failed in run.failed), run.failed


def test_a_hanging_candidate_costs_one_example_a_timeout(tmp_path):
    run = run_suite("tests.mutants.survival_hangs_on_meta_submodule", "conformance/test_meta.py",
                    *UNAFFECTED, "--candidate-timeout=2", "-n", "2", records=tmp_path)
    _check_survived(run, "hang", "test_meta.py")
    hang = next(r for r in run.records if r.get("severity") == "hang")
    assert "no answer within" in hang["divergences"][0]["message"]


def test_an_aborting_candidate_is_contained_by_isolation(tmp_path):
    run = run_suite("tests.mutants.survival_aborts_on_bool_extra",
                    "conformance/test_loading.py::test_dtype_rules", *UNAFFECTED, "--isolate",
                    "-n", "2", records=tmp_path)
    _check_survived(run, "crash", "test_dtype_rules")
    crash = next(r for r in run.records if r.get("severity") == "crash")
    assert "SIGABRT" in crash["divergences"][0]["message"]
    assert "--isolate" in crash["rerun"]


def test_resource_hostile_cases_reach_an_isolated_candidate_and_skip_in_process(tmp_path):
    """A FIFO index blocks a naive reader forever and a /dev/zero index exhausts it: in
    process they are skipped, saying --isolate tests them; isolated, the candidate meets
    them and the run ends with a hang and a crash (the memory limit) recorded."""
    selection = ("conformance/test_hostile.py::test_resource_hostile_checkpoint_is_refused"
                 "[index-is-fifo]", "conformance/test_hostile.py::"
                 "test_resource_hostile_checkpoint_is_refused[index-is-dev-zero]")
    plain = run_suite("tests.misbehaving:reads_every_file", *selection, "-rs",
                      records=tmp_path / "plain")
    assert plain.returncode == 0 and plain.output.count("run with --isolate to test it") == 2, \
        plain.output[-2000:]
    isolated = run_suite("tests.misbehaving:reads_every_file", *selection, "--isolate",
                         "--isolate-memory=256", "--candidate-timeout=3",
                         records=tmp_path / "isolated")
    assert isolated.returncode == 1 and len(isolated.failed) == 2, isolated.output[-3000:]
    severities = {r["test"].split("[")[-1].rstrip("]"): r["severity"] for r in isolated.records
                  if r.get("type") == "divergence" and r["stage"] == "final"}
    assert severities == {"index-is-fifo": "hang", "index-is-dev-zero": "crash"}, severities
