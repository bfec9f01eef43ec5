"""The one-page summary of `./run gpu-check` (conformance/gpu_summary.py), built from
fabricated step outputs written in the formats the real steps write (check.json, pytest's
JUnit XML, the suite's records, the FP8 figures, pytest-benchmark's JSON), so that its
numbers are known to be right before it ever meets a GPU; and the FP8 figures themselves,
measured on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conformance.figures import read_figures, write_figure
from conformance.fp8_compare import code_agreement, scaled_mm_divergences
from conformance.gpu_summary import build_summary, copy_figures, junit_cases, render, write_summary
from conformance.records import RecordWriter, run_metadata
from generators.checkpoints import CheckpointPlan
from reference.contract import LoadOptions, ModelSpec
from reference.fp8 import FP8
from reference.loading import ReferenceLoader

H200 = {"torch": "2.11.0+cu128", "cuda": "12.8", "python": "3.12.3", "device": "cuda",
        "gpu": "NVIDIA H200", "gpu_count": 1, "gpu_memory_gib": 139.8, "capability": "sm_90",
        "cudnn": 91002, "fp8_scaled_mm": True, "driver": "570.124.06",
        "notes": ["pytest-benchmark is not installed: the offload copies are timed directly"]}

CONFORMANCE_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="180.2">
<testcase classname="conformance.test_loading" name="test_load_matches_reference" time="41.5"/>
<testcase classname="conformance.test_tying" name="test_tied_head_is_the_embedding" time="3.2">
  <failure message="AssertionError: 1 divergence">long traceback</failure></testcase>
<testcase classname="conformance.test_bytes" name="test_parameter_bytes_for_every_dtype" time="0.1">
  <skipped type="pytest.skip" message="loader 'reference' does not claim bytes">skip</skipped></testcase>
<testcase classname="conformance.test_fp8_stateful.TestFp8Sequences" name="runTest" time="60.0"/>
</testsuite></testsuites>"""

MUTANTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="2">
<testcase classname="tests.test_mutants" name="test_mutant_is_caught[p9_offload_does_nothing]" time="20.5"/>
<testcase classname="tests.test_mutants" name="test_mutant_is_caught[p9_norms_never_onloaded]" time="30.0">
  <failure message="AssertionError: p9_norms_never_onloaded (norm weights never onloaded) was not caught">x</failure></testcase>
</testsuite></testsuites>"""


def _step(name: str, wall: float, budget: int, returncode: int = 0, timed_out: bool = False):
    return {"name": name, "what": name, "command": f"pytest {name}", "budget_s": budget,
            "wall_s": wall, "returncode": returncode, "timed_out": timed_out,
            "log": f"logs/{name}.log"}


def _records(directory: Path, outcomes: dict[str, str], divergences: list[dict] = ()) -> None:
    writer = RecordWriter(directory, "main", "20260101T000000-fabric")
    writer.write(run_metadata(loader="reference", loader_version="0.1", device="cuda",
                              profile="pr", seed=None))
    for test, outcome in outcomes.items():
        writer.write({"type": "outcome", "test": test, "outcome": outcome})
    for d in divergences:
        writer.write(d)


def fabricated_check(out: Path) -> Path:
    """A check folder as a GPU run would leave it: conformance with one failure, the FP8
    step with figures, offload interrupted at its budget (no JUnit, records only), one
    mutant not caught, the copy benchmark timed directly, the report."""
    (out / "junit").mkdir(parents=True)
    (out / "environment.json").write_text(json.dumps(H200))
    (out / "check.json").write_text(json.dumps({"device": "cuda", "wall_s": 401.5, "steps": [
        _step("conformance", 180.9, 210), _step("fp8_cuda", 35.0, 60),
        _step("offload", 60.2, 50, returncode=-2, timed_out=True),
        _step("mutants", 75.0, 90, returncode=1), _step("offload_copy", 12.0, 40),
        _step("report", 2.0, 20)]}))
    (out / "junit" / "conformance.xml").write_text(CONFORMANCE_XML)
    (out / "junit" / "mutants.xml").write_text(MUTANTS_XML)
    (out / "junit" / "fp8_cuda.xml").write_text(
        '<testsuites><testsuite tests="2">'
        '<testcase classname="conformance.test_fp8_cuda" name="test_cuda_codes_match_cpu_reference" time="20"/>'
        '<testcase classname="conformance.test_fp8_cuda" name="test_scaled_mm_matches_dequantized_matmul" time="14"/>'
        '</testsuite></testsuites>')
    tying = "conformance/test_tying.py::test_tied_head_is_the_embedding"
    _records(out / "records" / "conformance", {
        "conformance/test_loading.py::test_load_matches_reference": "passed",
        tying: "failed"}, [
        {"type": "divergence", "stage": "final", "test": tying, "property": "P10 tying",
         "loader": "reference", "case": "llama, tied", "rerun": f"pytest {tying}",
         "divergences": [{"kind": "alias", "subject": "lm_head.weight",
                          "message": "lm_head.weight: not the embedding's storage\nmore"}]}])
    _records(out / "records" / "offload", {
        "conformance/test_offload.py::test_offloaded_equals_resident_and_lives_on_the_host":
            "passed"})
    fp8 = out / "records" / "fp8_cuda"
    _records(fp8, {})
    for figure in ({"matrices": 7, "codes": 1000, "codes_differing": 0, "max_steps_apart": 0.0,
                    "scales": 7, "scales_differing": 0},
                   {"matrices": 14, "codes": 2500, "codes_differing": 5, "max_steps_apart": 1.0,
                    "scales": 14, "scales_differing": 1}):
        write_figure(fp8, "fp8_cuda_codes", figure)
    for ratio, error in ((0.25, 1e-6), (0.5, 3e-6), (0.125, 2e-5)):
        write_figure(fp8, "fp8_cuda_scaled_mm", {"weight": "w", "max_abs_error": error,
                                                 "max_error_over_tolerance": ratio})
    (out / "bench").mkdir()
    (out / "bench" / "offload_copy.json").write_text(json.dumps({
        "measured_by": "benchmarks.offload_copy (direct timing: pytest-benchmark is not installed)",
        "benchmarks": [
            {"name": "test_pinned_copy_bandwidth", "stats": {"median": 0.0016},
             "extra_info": {"bytes": 80_000_000, "GB/s (median)": 50.0}},
            {"name": "test_offloader_onload_throughput", "stats": {"median": 0.002},
             "extra_info": {"bytes": 80_000_000}}]}))  # GB/s from bytes / median
    return out


def test_summary_of_a_fabricated_gpu_check(tmp_path: Path):
    summary = build_summary(fabricated_check(tmp_path / "check"))
    assert summary["verdict"] == "FAILED"
    assert summary["failed_steps"] == ["offload", "mutants"]
    assert summary["budget_s"] == 470 and summary["wall_s"] == 401.5
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["conformance"]["counts"] == {"passed": 2, "failed": 1, "error": 0, "skipped": 1}
    tests = {t["test"]: t for t in steps["conformance"]["tests"]}
    assert tests["test_tying.py::test_tied_head_is_the_embedding"]["note"] == \
        "[P10 tying] lm_head.weight: not the embedding's storage"
    assert tests["test_bytes.py::test_parameter_bytes_for_every_dtype"]["note"] == \
        "loader 'reference' does not claim bytes"
    assert "test_fp8_stateful.py::TestFp8Sequences::runTest" in tests
    # interrupted at its budget: no JUnit, the outcome comes from the records
    (offload,) = steps["offload"]["tests"]
    assert offload["outcome"] == "passed" and offload["time"] is None
    assert steps["mutants"]["counts"]["failed"] == 1
    assert summary["fp8"] == {"examples": 2, "matrices": 21, "codes": 3500, "codes_differing": 5,
                              "scales": 21, "scales_differing": 1, "max_steps_apart": 1.0,
                              "matmuls": 3, "max_error_over_tolerance": 0.5,
                              "max_abs_error": 2e-5}
    copies = summary["copies"]
    assert copies["pinned_gbps"] == 50.0 and copies["onload_gbps"] == 40.0
    assert copies["onload_over_pinned"] == 0.8 and copies["bytes"] == 80_000_000


def test_rendered_page_says_every_figure(tmp_path: Path):
    page = render(build_summary(fabricated_check(tmp_path / "check")))
    assert page.startswith("# loadcheck GPU check: FAILED (2 of 6 steps: offload, mutants)")
    for line in [
        "NVIDIA H200 (sm_90, 139.8 GiB, driver 570.124.06); torch 2.11.0+cu128, CUDA 12.8, "
        "cuDNN 91002; Python 3.12.3; device cuda",
        "Total wall time 401.5 s (step budgets 470 s).",
        "Note: pytest-benchmark is not installed: the offload copies are timed directly.",
        "| conformance | ok | 181 / 210 s | 2 | 1 | 1 |",
        "| offload | TIMED OUT | 60 / 50 s | 1 | 0 | 0 |",
        "| mutants | exit 1 | 75 / 90 s | 1 | 1 | 0 |",
        "- codes: 3,500 codes of 21 quantized matrices in 2 examples, GPU vs CPU reference: "
        "**5 differ**, at most 1 code step apart",
        "- scales: 21 compared, **1 differ**",
        "- torch._scaled_mm: 3 matmuls; worst error 0.5 of the FP8 tolerance (max abs error "
        "2e-05): within",
        "- raw pinned `copy_` (80 MB layer, median): 50.00 GB/s",
        "- offloader onload (side stream, events, pinned host copies): 40.00 GB/s = 80% of pinned",
        "| conformance | test_tying.py::test_tied_head_is_the_embedding | **failed** | 3.2 | "
        "[P10 tying] lm_head.weight: not the embedding's storage |",
        "| mutants | test_mutants.py::test_mutant_is_caught[p9_norms_never_onloaded] | **failed** "
        "| 30.0 | AssertionError: p9_norms_never_onloaded (norm weights never onloaded) was not "
        "caught |",
    ]:
        assert line in page.splitlines(), f"missing line:\n{line}\n\nin:\n{page}"
    terminal = render(build_summary(tmp_path / "check"), every_test=False)
    assert "test_loading.py::test_load_matches_reference" in page
    assert "test_loading.py::test_load_matches_reference" not in terminal
    assert "test_tying.py::test_tied_head_is_the_embedding" in terminal


def test_nothing_measured_says_why(tmp_path: Path):
    """A CPU rehearsal: the FP8 tests skip and the benchmark has no figures; the summary
    says so with the skip reasons instead of printing zeros."""
    out = tmp_path / "check"
    (out / "junit").mkdir(parents=True)
    (out / "check.json").write_text(json.dumps({"device": "cpu", "wall_s": 9.0, "steps": [
        _step("fp8_cuda", 5.0, 60), _step("offload_copy", 4.0, 40)]}))
    (out / "junit" / "fp8_cuda.xml").write_text(
        '<testsuites><testsuite><testcase classname="conformance.test_fp8_cuda" name="t" '
        'time="0.1"><skipped message="run with --device cuda"/></testcase></testsuite></testsuites>')
    (out / "junit" / "offload_copy.xml").write_text(
        '<testsuites><testsuite><testcase classname="benchmarks.test_offload_copy" name="b" '
        'time="0.1"><skipped message="no CUDA device: the offload copy benchmark needs one"/>'
        '</testcase></testsuite></testsuites>')
    assert write_summary(out)["verdict"] == "PASSED"
    page = (out / "SUMMARY.md").read_text()
    assert page.startswith("# loadcheck GPU check: PASSED")
    assert "- not measured: run with --device cuda" in page
    assert "- not measured: no CUDA device: the offload copy benchmark needs one" in page
    assert json.loads((out / "summary.json").read_text())["verdict"] == "PASSED"


def test_codes_compared_but_no_matmul_says_why(tmp_path: Path):
    """A GPU whose torch has no FP8 _scaled_mm: the codes are compared, the matmul test
    skips, and the page says so rather than reporting a check that never ran."""
    out = tmp_path / "check"
    (out / "junit").mkdir(parents=True)
    (out / "environment.json").write_text(json.dumps({**H200, "capability": "sm_80",
                                                      "fp8_scaled_mm": False}))
    (out / "check.json").write_text(json.dumps({"device": "cuda", "wall_s": 30.0,
                                                "steps": [_step("fp8_cuda", 25.0, 60)]}))
    (out / "junit" / "fp8_cuda.xml").write_text(
        '<testsuites><testsuite><testcase classname="conformance.test_fp8_cuda" '
        'name="test_cuda_codes_match_cpu_reference" time="20"/><testcase '
        'classname="conformance.test_fp8_cuda" name="test_scaled_mm_matches_dequantized_matmul" '
        'time="0.1"><skipped message="run with --device cuda (torch._scaled_mm)"/></testcase>'
        '</testsuite></testsuites>')
    write_figure(out / "records" / "fp8_cuda", "fp8_cuda_codes", {
        "matrices": 7, "codes": 700, "codes_differing": 0, "max_steps_apart": 0.0, "scales": 7,
        "scales_differing": 0})
    page = render(build_summary(out))
    assert "NVIDIA H200 (sm_80, 139.8 GiB, driver 570.124.06, no FP8 _scaled_mm)" in page
    assert "- codes: 700 codes of 7 quantized matrices in 1 example, GPU vs CPU reference: exact" \
        in page.splitlines()
    assert "- scales: 7 compared, all equal (bit for bit)" in page.splitlines()
    assert "- torch._scaled_mm: not checked: run with --device cuda (torch._scaled_mm)" in \
        page.splitlines()


def test_a_cut_or_missing_input_is_not_a_crash(tmp_path: Path):
    (tmp_path / "cut.xml").write_text("<testsuites><testsuite><testcase name=")
    assert junit_cases(tmp_path / "cut.xml") == {}
    assert junit_cases(tmp_path / "absent.xml") == {}
    assert copy_figures(tmp_path / "absent.json") is None
    write_figure(tmp_path, "k", {"a": 1})
    with open(tmp_path / "figures" / "k-main.jsonl", "a") as f:
        f.write('{"a": ')  # a run killed mid-line
    assert read_figures(tmp_path, "k") == [{"a": 1}]


def _fp8_state(tmp_path: Path) -> tuple[ModelSpec, dict]:
    spec = ModelSpec(num_layers=1)
    directory = CheckpointPlan(spec).write(tmp_path / "c")
    return spec, dict(ReferenceLoader().load(str(directory), spec, LoadOptions(quantize="fp8")).state)


def test_code_agreement_counts_codes_one_step_apart_and_scales(tmp_path: Path):
    spec, state = _fp8_state(tmp_path)
    assert code_agreement(state, state, spec) == {
        "matrices": len(spec.quantized_weights()), "codes_differing": 0, "max_steps_apart": 0.0,
        "codes": sum(state[w].numel() for w in spec.quantized_weights()),
        "scales": len(spec.quantized_weights()), "scales_differing": 0}
    name = spec.quantized_weights()[0]
    codes = state[name].clone().reshape(-1)
    bump = ((codes.float() > 0) & (codes.float() < 400)).nonzero()[:3, 0]
    assert len(bump) == 3
    codes.view(torch.uint8)[bump] += 1  # the next code up: one step
    found = {**state, name: codes.reshape(state[name].shape).view(FP8),
             name + "_scale": state[name + "_scale"] * 2}
    figures = code_agreement(state, found, spec)
    assert (figures["codes_differing"], figures["max_steps_apart"],
            figures["scales_differing"]) == (3, 1.0, 1)


def test_scaled_mm_figures_on_cpu(tmp_path: Path):
    """The figures the FP8 CUDA property writes, from CPU's _scaled_mm: one per per-tensor
    quantized linear, within the tolerance for a correct state, beyond it for a wrong scale."""
    spec, state = _fp8_state(tmp_path)
    figures: list[dict] = []
    assert not scaled_mm_divergences(state, state, spec, "cpu", 3, figures=figures)
    assert [f["weight"] for f in figures] == list(spec.quantized_weights())
    assert all(0 <= f["max_error_over_tolerance"] <= 1 for f in figures)
    name = "model.layers.0.mlp.up_proj.weight"
    wrong: list[dict] = []
    scaled_mm_divergences({**state, name + "_scale": state[name + "_scale"] * 1.01}, state, spec,
                          "cpu", 3, figures=wrong)
    assert next(f for f in wrong if f["weight"] == name)["max_error_over_tolerance"] > 1
