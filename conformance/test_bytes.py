"""Bytes (P7, seed 002): a loader's byte accounting equals numel x itemsize for every
parameter and every torch dtype (floats, every FP8 variant, ints, uints, bool, sub-byte
ints, FP4 pairs), and the total is their sum. See reference/accounting.py for the rule."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from generators.cases import load_cases
from generators.specs import any_dtype, extra_params
from .compare import Divergence
from .harness import candidate_call, count_example, fail_on, load_both, written
from .session import current


@pytest.mark.requires("load", "bytes")
@given(data=st.data())
def test_parameter_bytes_for_every_dtype(data):
    run = current()
    count_example()
    # Several extras of any dtype per model, so every example counts many dtypes at once
    # (a loader without `extras` is checked on the model's own float parameters).
    # Neither strict nor track: extras of dtypes safetensors cannot store (sub-byte, fnuz,
    # FP4) are missing by construction, and either option makes the load raise on them
    # (strict means missing too since issue 14), which left a third of the examples with
    # no model to count.
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, extras=True, tp=True,
                                strict=False, track=False,
                                extra_strategy=extra_params(min_count=3, max_count=6,
                                                            dtypes=any_dtype)), label="case")
    with written(case.plan) as directory:
        expected, found = load_both(case, directory)
        if expected.result is None or found.result is None:
            return  # whether both load is the loading properties' business
        want = run.reference.parameter_bytes(expected.result)
        got = candidate_call(lambda: run.candidate.parameter_bytes(found.result))
        if got.error is not None:
            fail_on([Divergence("error", "parameter_bytes", f"parameter_bytes raised "
                                f"{got.describe()}", {"found": got.describe()})], "P7 bytes",
                    case, directory)
            return  # known to the baseline (fail_on returned): nothing more to compare
        found_bytes, divergences = dict(got.result), []
        for name in sorted(want):
            tensor = expected.result.state[name]
            if found_bytes.get(name) != want[name]:
                divergences.append(Divergence(
                    "bytes", name, f"{name}: {found_bytes.get(name)} bytes, expected {want[name]}"
                    f" ({tensor.dtype}, shape {list(tensor.shape)}: numel x itemsize)",
                    {"expected": want[name], "found": found_bytes.get(name)},
                    tensor=name, dtype=str(tensor.dtype), shape=list(tensor.shape),
                    expected=f"{want[name]:,} bytes", found=f"{found_bytes.get(name)} bytes"))
        total, found_total = sum(want.values()), sum(v or 0 for v in found_bytes.values())
        if total != found_total:
            divergences.append(Divergence("bytes", "total", f"total: {found_total} bytes, "
                                          f"expected {total}", {"expected": total,
                                                                "found": found_total},
                                          expected=f"{total:,} bytes",
                                          found=f"{found_total:,} bytes"))
        fail_on(divergences, "P7 bytes", case, directory)
