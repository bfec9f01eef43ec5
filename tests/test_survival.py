"""The suite survives its candidates: a run against a loader that hangs on one layout, or
aborts the interpreter on one layout (with --isolate), finishes; the affected properties
fail with `hang` / `crash` records, and every other property still runs and passes."""

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
