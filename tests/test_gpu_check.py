"""`./run gpu-check` on a machine without a GPU (CI): one line and a non-zero exit, a missing
dependency named before anything runs, the plan it would run (every step, command and
budget), a step that overruns its budget interrupted while the next still runs, and a CPU
rehearsal of the steps that need no GPU, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conformance import gpu_check
from conformance.gpu_check import (BUDGETS, OPTIONAL, REQUIRED, Step, missing_dependencies,
                                   mutants_on_device, plan, run_step)
from conformance.gpu_summary import step_tests
from tests.mutants import MUTANTS
from tests.mutation import ROOT

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(),
                                  reason="this machine has a GPU: the check would run for real")
# The longest a GPU session may give one command, less its start-up: every budget together.
DEVICE_COMMAND_LIMIT_S = 8 * 60


def _run(*args: str, env: dict | None = None, pythonpath: str | None = None):
    env = {**os.environ, "LOADCHECK_PYTHON": sys.executable, **(env or {})}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(["./run", "gpu-check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@needs_no_gpu
def test_without_a_gpu_it_says_so_in_one_line(tmp_path: Path):
    run = _run("--out", str(tmp_path / "out"))
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 3, run.stdout + run.stderr
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device on this machine"), lines
    assert lines[0].endswith("nothing was run")
    assert not (tmp_path / "out").exists()


def test_a_missing_dependency_is_named_before_anything_runs(tmp_path: Path):
    """safetensors shadowed by a module that cannot be imported, as on a machine without it."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "safetensors.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'safetensors'\", name='safetensors')\n")
    run = _run("--out", str(tmp_path / "out"), pythonpath=f"{shadow}{os.pathsep}{ROOT}")
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu-check: missing dependency: safetensors (install safetensors; "
                               "ModuleNotFoundError: No module named 'safetensors')"), lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_dependencies_names_module_and_package():
    assert missing_dependencies({"json": "json", "loadcheck_no_such_module": "no-such-pkg"}) == [
        "loadcheck_no_such_module (install no-such-pkg; ModuleNotFoundError: No module named "
        "'loadcheck_no_such_module')"]
    assert missing_dependencies({"loadcheck_no_such_module": "x"}, import_them=False)
    assert not missing_dependencies(REQUIRED)  # this environment has everything


def test_dry_run_prints_every_step_with_its_command_and_budget(tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    total = sum(BUDGETS.values())
    assert f"plan: {len(BUDGETS)} steps, at most {total} s of budgets" in text
    assert total + gpu_check.GRACE_S <= DEVICE_COMMAND_LIMIT_S
    for number, (name, budget) in enumerate(BUDGETS.items(), 1):
        assert f"[{number}/{len(BUDGETS)}] {name} (budget {budget} s)" in text
    assert text.count("--device=cuda") == 3 and "LOADCHECK_MUTANT_DEVICE=cuda" in text
    assert f"--records={out.resolve()}/records/fp8_cuda" in text
    assert not out.exists()


def test_only_and_budget_scale_select_a_rerun(capsys, tmp_path: Path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", "fp8_cuda,offload",
                           "--budget-scale", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "plan: 2 steps, at most 55 s" in text and "conformance (budget" not in text
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--only", "fp8"])
    assert "unknown step(s) fp8" in capsys.readouterr().err


def test_the_plan_without_xdist_or_pytest_benchmark(tmp_path: Path):
    steps = {s.name: s for s in plan(tmp_path, device="cuda", python="python3", workers=8,
                                     xdist=False, benchmark=False, mutants=["p9_offload_does_nothing"])}
    assert list(steps) == list(BUDGETS)
    assert not any("-n" in s.argv for s in steps.values())
    assert steps["offload_copy"].argv == ("python3", "-m", "benchmarks.offload_copy", "--json",
                                          str(tmp_path / "bench" / "offload_copy.json"))
    assert "tests/test_mutants.py::test_mutant_is_caught[p9_offload_does_nothing]" in \
        steps["mutants"].argv
    parallel = {s.name: s for s in plan(tmp_path, device="cuda", python="p", workers=8,
                                        xdist=True, benchmark=True, mutants=list(MUTANTS[:18]))}
    def workers(step: Step) -> str:
        return step.argv[step.argv.index("-n") + 1]
    assert (workers(parallel["conformance"]), workers(parallel["mutants"])) == ("8", "16")
    assert parallel["mutants"].env == {"LOADCHECK_MUTANT_DEVICE": "cuda", "OMP_NUM_THREADS": "1"}
    # no mutant named: no step (a bare `pytest` would run every test of tests/)
    assert "mutants" not in [s.name for s in plan(tmp_path, device="cuda", python="p", workers=1,
                                                  xdist=True, benchmark=True, mutants=[])]
    assert set(OPTIONAL) == {"xdist", "pytest_benchmark"}


def test_without_pytest_benchmark_pyproject_filters_are_overridden_for_nested_runs():
    env = gpu_check._step_env(without_benchmark=True)
    assert "-o filterwarnings=default" in env["PYTEST_ADDOPTS"]
    assert str(ROOT) == env["PYTHONPATH"].split(os.pathsep)[0]
    assert "PYTEST_ADDOPTS" not in gpu_check._step_env(without_benchmark=False) or \
        "filterwarnings" not in gpu_check._step_env(without_benchmark=False)["PYTEST_ADDOPTS"]


def test_mutants_of_cuda_paths():
    chosen = mutants_on_device()
    assert set(chosen) <= set(MUTANTS)
    assert {"p9_offload_does_nothing", "p9_norms_never_onloaded", "p9_host_copies_share_storage",
            "p9_post_process_reallocates", "seed001_reload_keeps_stale_scale",
            "p4_float16_scale_underflows", "seed000_move_casts_dtype"} <= set(chosen)
    assert not {"p11_last_key_wins", "p7_dtype_size_by_name", "p1_tp_rank_ignored"} & set(chosen)


def test_a_step_over_budget_is_interrupted_and_reported(tmp_path: Path, monkeypatch):
    """A hung step (one that even ignores SIGINT) is killed at budget + grace; its result
    says so, and the log keeps what it printed."""
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    hung = Step("hung", "sleeps", (sys.executable, "-c", "import signal, time; "
                                   "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                   "print('started', flush=True); time.sleep(120)"), budget_s=2)
    result = run_step(hung, tmp_path / "logs" / "hung.log", dict(os.environ))
    assert result["timed_out"] and result["returncode"] != 0
    assert result["wall_s"] < 60
    assert "started" in (tmp_path / "logs" / "hung.log").read_text()
    quick = run_step(Step("quick", "exits", (sys.executable, "-c", "raise SystemExit(5)"), 30),
                     tmp_path / "logs" / "quick.log", dict(os.environ))
    assert (quick["timed_out"], quick["returncode"]) == (False, 5)


SAMPLE = """
import time, pytest
def test_quick():
    pass
def test_skipped():
    pytest.skip("not on this machine")
def test_fails():
    assert 1 == 2, "one is not two"
def test_hangs():
    time.sleep(600)
"""


def test_an_interrupted_xdist_step_still_says_which_tests_finished(tmp_path: Path, monkeypatch):
    """xdist's controller writes no JUnit XML when interrupted: the outcome log
    (conformance/outcome_log.py) keeps every finished test, and the summary reads it."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    monkeypatch.setattr(gpu_check, "GRACE_S", 2)
    log, junit = tmp_path / "outcomes" / "sample.jsonl", tmp_path / "junit" / "sample.xml"
    step = Step("sample", "a hung test among others", (
        sys.executable, "-m", "pytest", str(tmp_path / "test_sample.py"), "-p", "no:cacheprovider",
        "-n", "2", "-p", "conformance.outcome_log", f"--outcome-log={log}", f"--junitxml={junit}"),
        budget_s=40)
    result = run_step(step, tmp_path / "logs" / "sample.log", gpu_check._step_env(False))
    assert result["timed_out"], (tmp_path / "logs" / "sample.log").read_text()
    tests = {t["test"]: t for t in step_tests(junit, log)}
    assert {k: t["outcome"] for k, t in tests.items()} == {
        "test_sample.py::test_quick": "passed", "test_sample.py::test_skipped": "skipped",
        "test_sample.py::test_fails": "failed"}, (tmp_path / "logs" / "sample.log").read_text()
    assert tests["test_sample.py::test_skipped"]["note"] == "not on this machine"
    assert "one is not two" in tests["test_sample.py::test_fails"]["note"]


def test_an_out_folder_of_something_else_is_refused(tmp_path: Path):
    (tmp_path / "thesis.tex").write_text("keep me")
    assert "holds files of something else (thesis.tex)" in gpu_check._prepare(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "keep me"
    earlier = tmp_path / "earlier"
    (earlier / "logs").mkdir(parents=True)
    (earlier / "SUMMARY.md").write_text("old")
    assert gpu_check._prepare(earlier) is None and not any(earlier.iterdir())


def test_rehearsal_on_cpu_of_the_steps_that_skip_without_a_gpu(tmp_path: Path):
    """The real commands of three steps, on CPU: the FP8 CUDA properties and the copy
    benchmark skip, saying why; the report is built; the summary reads it all."""
    out = tmp_path / "out"
    run = _run("--device", "cpu", "--out", str(out), "--only", "fp8_cuda,offload_copy,report")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "PASSED"
    assert [s["name"] for s in summary["steps"]] == ["fp8_cuda", "offload_copy", "report"]
    fp8 = next(s for s in summary["steps"] if s["name"] == "fp8_cuda")
    assert fp8["counts"]["skipped"] == 2 and fp8["counts"]["passed"] == 0
    page = (out / "SUMMARY.md").read_text()
    assert "- not measured: loader 'reference' does not claim cuda" in page
    assert "- not measured: no CUDA device: the offload copy benchmark needs one" in page
    assert (out / "report.html").is_file()
    assert "loadcheck GPU check: PASSED" in run.stdout
