"""FP8 on CUDA: codes a candidate computes on the GPU against the CPU reference (exactly, or
within one code step where the loader declares `fp8_cuda_codes: one_step`), and the FP8
matmul (`torch._scaled_mm`) on its codes and scales against the matmul of the dequantized
operands, within a tolerance this suite defines for FP8 (never `assert_close`'s defaults,
which compare dtypes missing from their table exactly)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from generators.fp8 import online_cases
from .compare import Divergence, compare_states, run_outcome
from .figures import write_figure
from .fp8_compare import code_agreement, codes_within_one_step, scaled_mm_divergences
from .harness import candidate_call, count_example, fail_on, written
from .quant_compare import refine_quantized
from .session import current


def _cpu_reference_and_cuda_candidate(run, case, directory):
    """The reference's load on the host (the meaning) and the candidate's on the GPU."""
    __tracebackhide__ = True
    cpu = replace(case.options, device="cpu")
    want = run_outcome(lambda: run.reference.load(str(directory), case.plan.spec, cpu))
    got = candidate_call(lambda: run.candidate.load(str(directory), case.plan.spec,
                                                    case.options))
    return want, got


@pytest.mark.requires("load", "fp8_online", "cuda")
@given(data=st.data())
def test_cuda_codes_match_cpu_reference(data):
    """Online FP8 on the GPU: scales equal the CPU reference's; codes equal them, or lie
    within one FP8 code step where the loader declares it."""
    run = current()
    if run.device != "cuda":
        pytest.skip("run with --device cuda")
    count_example()
    case = data.draw(online_cases(run.capabilities, support=run.support, device="cuda"), label="case")
    with written(case.plan) as directory:
        want, got = _cpu_reference_and_cuda_candidate(run, case, directory)
        if want.result is None or got.result is None:
            if (want.error is None) != (got.error is None):
                fail_on([Divergence("error", "load", f"reference (CPU) {want.describe()}; "
                                    f"candidate (CUDA) {got.describe()}")],
                        "FP8 on CUDA", case, directory)
            return
        one_step = run.candidate.variants.get("fp8_cuda_codes") == "one_step"
        expected = dict(want.result.state)
        found = {n: t.cpu() for n, t in got.result.state.items()}
        # every example's agreement, failing or not: ./run gpu-check reports the totals
        write_figure(run.records.directory, "fp8_cuda_codes",
                     code_agreement(expected, found, case.plan.spec))
        divergences = []
        if one_step:
            divergences += codes_within_one_step(expected, found, case.plan.spec)
        divergences += refine_quantized(
            compare_states(expected, found, where=lambda n: "CUDA vs the CPU reference"),
            expected, found, case.plan.spec, case.options)
        fail_on(divergences, "FP8 on CUDA", case, directory)


@pytest.mark.requires("load", "fp8_online", "cuda")
@given(data=st.data())
def test_scaled_mm_matches_dequantized_matmul(data):
    """torch._scaled_mm on the candidate's codes and scales equals the float64 matmul with
    the CPU reference's dequantized weights within `fp8_matmul_tolerance` (one code step
    more where declared), for every quantized linear."""
    run = current()
    if run.device != "cuda" or not hasattr(torch, "_scaled_mm"):
        pytest.skip("run with --device cuda (torch._scaled_mm)")
    count_example()
    case = data.draw(online_cases(run.capabilities, support=run.support, device="cuda"), label="case")
    rows = data.draw(st.integers(1, 4), label="tokens")
    with written(case.plan) as directory:
        want, got = _cpu_reference_and_cuda_candidate(run, case, directory)
        if got.result is None or want.result is None:
            return  # error agreement is test_cuda_codes_match_cpu_reference's job
        one_step = run.candidate.variants.get("fp8_cuda_codes") == "one_step"
        matmuls: list[dict] = []
        divergences = scaled_mm_divergences(got.result.state, want.result.state,
                                            case.plan.spec, "cuda", rows, one_step, matmuls)
        for figure in matmuls:
            write_figure(run.records.directory, "fp8_cuda_scaled_mm", figure)
        fail_on(divergences, "FP8 matmul on CUDA", case, directory)
