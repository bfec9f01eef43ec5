"""Loading (P1, P2, P14, dtypes, order): split / fused / sharded / TP checkpoints load into
exactly the reference's canonical state, every allocation written (poisoned first)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from generators.cases import LoadCase, load_cases
from generators.checkpoints import checkpoint_plans
from generators.specs import model_specs
from reference.tp import gather_ranks
from .compare import Divergence, compare_states
from .profiles import fewer_examples
from .tp_compare import gathered_where, same_slice_divergences
from .harness import (candidate_call, check_case, count_example, fail_if_states_differ, fail_on,
                      load_both, written)
from .session import current


@pytest.mark.requires("load")
@given(data=st.data())
def test_load_matches_reference(data):
    """P1 + P2: any layout, shard count, TP rank and dtype gives the reference's state."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, tp=True, extras=True,
                                dtype_override=True), label="case")
    check_case(case, "P2 coverage")


@pytest.mark.requires("load", "fused_on_disk")
@given(data=st.data())
def test_split_and_fused_on_disk_agree(data):
    """P1: the same weights split on disk and fused on disk load bit-identically."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, tp=True), label="case")
    _, split = check_case(LoadCase(replace(case.plan, fused=False), case.options), "P1 split/fused")
    _, fused = check_case(LoadCase(replace(case.plan, fused=True), case.options), "P1 split/fused")
    fail_if_states_differ(split, fused, "P1 split/fused", case,
                          "fused-on-disk and split-on-disk loads differ")


@pytest.mark.requires("load", "tp")
@given(data=st.data())
def test_gathered_ranks_equal_tp1(data):
    """P1: gathering every rank's slices gives the tp=1 state; ranks hold distinct q slices."""
    run = current()
    count_example()
    # Each relation of tp_size to kv heads is its own corner (kv heads sliced, one each,
    # several replicated, one replicated to all), so draw the relation itself.
    tp_size, kv = data.draw(st.sampled_from([(4, 2), (2, 4), (2, 2), (4, 1), (2, 1), (4, 4)]),
                            label="tp_size, num_kv_heads")
    spec = data.draw(model_specs(support=run.support, tp_size=tp_size, kv_heads=st.just(kv)), label="spec")
    plan = data.draw(checkpoint_plans(spec, fused_choices=(spec.fused_on_disk_natively,)),
                     label="plan")
    base = data.draw(load_cases(run.capabilities, support=run.support, device=run.device), label="options").options
    with written(plan) as directory:
        states, references = [], []
        for rank in range(tp_size):
            case = LoadCase(plan, replace(base, tp_size=tp_size, tp_rank=rank))
            expected, found = load_both(case, directory)
            if found.result is None and expected.result is None and \
                    found.family in expected.error.alternatives:
                return  # refused alike (a vocabulary this split cannot take): nothing to gather
            if found.result is None or expected.result is None:
                fail_on([Divergence("error", f"rank {rank}", f"rank {rank}/{tp_size}: reference "
                                    f"{expected.describe()}; candidate {found.describe()}")],
                        "P1 tensor parallel", case, directory)
                return  # known to the baseline (fail_on returned): no ranks to gather
            states.append(found.result.state)
            references.append(expected.result.state)
        case = LoadCase(plan, replace(base, tp_size=1, tp_rank=0))
        vocab_shards = run.reference.variants["vocab_shards"]
        expected_full = gather_ranks(spec, references, vocab_shards)
        divergences = same_slice_divergences(spec, states, references, vocab_shards)
        divergences += compare_states(expected_full, gather_ranks(spec, states, vocab_shards),
                                      where=lambda n: gathered_where(spec, n, tp_size,
                                                                     vocab_shards))
        fail_on(divergences, "P1 tensor parallel", case, directory,
                title=f"gathered ranks differ from the tp=1 state (tp_size={tp_size})")


@pytest.mark.requires("load")
@given(data=st.data())
def test_name_mapping_is_exact(data):
    """P14: near-miss keys (qq_proj, layers.03, a suffix, a prefix) feed nothing."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, near_miss=True),
                     label="case")
    check_case(case, "P14 name mapping")


@pytest.mark.requires("load")
@given(data=st.data())
def test_dtype_rules(data):
    """Floats round to nearest even; int, bool and FP8 keep their dtype; float into int fails."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, extras=True,
                                wrong_dtype=True, dtype_override=True), label="case")
    check_case(case, "dtype rules")


@pytest.mark.requires("load")
@given(data=st.data())
def test_float_casts_round_once(data):
    """Every float conversion (float64, float32, bfloat16, float16 on disk into each float
    parameter dtype) rounds once to nearest even, its ties included: every disk dtype is
    drawn as often (`casts`), so each conversion is met within a few examples."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, extras=True,
                                wrong_dtype=True, dtype_override=True, casts=True), label="case")
    check_case(case, "dtype rules")


@pytest.mark.requires("load")
@given(data=st.data())
def test_shape_mismatch_is_an_error(data):
    """A tensor whose shape differs from its parameter's is an error naming the key."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, wrong_shape=True, tp=True),
                     label="case")
    check_case(case, "shape mismatch")


@pytest.mark.requires("load")
@fewer_examples(4)
@given(data=st.data())
def test_result_independent_of_tensor_order(data):
    """The order of tensors in files (and how they are spread over shards) never matters."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, tp=True), label="case")
    other_order = data.draw(st.integers(0, 2**16), label="other_order_seed")
    other_shards = data.draw(st.integers(1, case.plan.shards), label="other_shards")
    _, first = check_case(case, "order")
    shuffled = LoadCase(replace(case.plan, order_seed=other_order, shards=other_shards),
                        case.options)
    _, second = check_case(shuffled, "order")
    fail_if_states_differ(first, second, "order", shuffled,
                          "the result depends on tensor order (same weights, another order)")


@pytest.mark.requires("load", "forward")
@given(data=st.data())
def test_forward_logits(data):
    """Logits of the tiny decoder equal the reference's within the dtype's tolerance."""
    run = current()
    count_example()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, meta=True), label="case")
    ids = data.draw(st.lists(st.integers(0, case.plan.spec.vocab_size - 1), min_size=1,
                             max_size=6), label="input_ids")
    with written(case.plan) as directory:
        expected, found = load_both(case, directory)
        if expected.result is None or found.result is None:
            return  # error agreement is test_load_matches_reference's job
        input_ids = torch.tensor([ids], device=case.options.device)
        want = run.reference.forward(expected.result, input_ids).float().cpu()
        got = candidate_call(lambda: run.candidate.forward(found.result, input_ids))
        # The reference computes in float32; a candidate may compute in the model's dtype,
        # whose rounding grows with the logits' size and the number of layers.
        dtype = case.options.dtype or case.plan.spec.dtype
        eps, layers = torch.finfo(getattr(torch, dtype)).eps, case.plan.spec.num_layers + 1
        tolerance = 1e-4 if dtype == "float32" else \
            8 * eps * layers * max(1.0, float(want.abs().max()))
        problem = None
        if got.error is not None:
            problem = f"forward raised {type(got.error).__name__}: {got.error}"
        else:
            logits = got.result.float().cpu()
            try:
                torch.testing.assert_close(logits, want, rtol=tolerance, atol=tolerance)
            except AssertionError as exc:
                problem = f"logits differ from the reference's: {str(exc).splitlines()[1:4]}"
        if problem:
            fail_on([Divergence("logits", "logits", problem, {"input_ids": ids})],
                    "forward", case, directory)
