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


def test_the_survival_matrix_runs_a_kind_and_writes_its_row(tmp_path):
    """tests/survival_matrix.py on one kind, isolated, on one property (the full matrix is a
    manual run, docs/survival.md): the row says the run finished, every collected test
    reported, every failure has a record; a kind unsafe in process is not run there, saying
    why; and the doc's table is replaced between its markers."""
    from tests.survival_matrix import END, START, main
    doc = tmp_path / "survival.md"
    doc.write_text(f"# prose kept\n\n{START}\nold table\n{END}\nmore prose\n")
    common = ["--results", str(tmp_path / "rows"), "--doc", str(doc), "-n", "1"]
    assert main([*common, "--kinds", "allocates", "--modes", "in-process"]) == 0  # not run
    status = main([*common, "--kinds", "kills_itself", "--modes", "isolate",
                   "conformance/test_tying.py"])  # rows add up: the table has both
    text = doc.read_text()
    assert status == 0, text
    assert text.startswith("# prose kept") and "old table" not in text and "more prose" in text
    rows = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    isolated = [c.strip() for c in rows["kills_itself/isolate"].split("|")]
    # kind, mode, finished, wall, collected/reported, p/f/s, records, state, recorded, survived
    assert isolated[3] == "y" and isolated[5] == "1 / 1" and isolated[6] == "0 / 1 / 0", text
    assert isolated[7].startswith("1 (crash 1") and isolated[8] == "fail", text
    assert isolated[9] == "yes" and isolated[10] == "y", text
    assert "not run: 2 GiB per call" in rows["allocates/in-process"], text
