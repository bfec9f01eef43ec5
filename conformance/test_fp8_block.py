"""Block-wise FP8 (issue 16; reference/quant/fp8_block.py): serialized block checkpoints and
online block quantization give the reference's codes and `weight_scale_inv` grids per
logical matrix; every block scale is written (allocations poisoned first); split and fused
on disk agree; TP ranks gathered equal tp=1 for weights and scales; every block round-trips
within half a code step, zero blocks included; a scale grid of the wrong shape and a shard
boundary inside a block (for a loader that stacks q/k/v) are clear errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from generators.cases import LoadCase
from generators.fp8_block import online_block_cases, serialized_block_cases
from reference.tp import gather_ranks
from .compare import Divergence, compare_states, run_outcome
from .fp8_block_compare import block_of, block_round_trip_divergences
from .harness import (candidate_call, check_case, count_example, fail_if_states_differ, fail_on,
                      load_both, written)
from .quant_compare import refine_quantized
from .profiles import fewer_examples
from .session import current

# Block FP8 is one format among several in the `pr` run's 60 s budget: the properties
# that catch a block FP8 mutant run a quarter of the profile's examples (25 in `pr`; each
# mutant is caught within 20, tests/test_mutants.py), the others, which load three or
# four times per example and catch no mutant of their own, an eighth (12).
fewer = fewer_examples(4)
fewest = fewer_examples(8)


@pytest.mark.requires("load", "fp8_block_serialized")
@fewer
@given(data=st.data())
def test_block_fp8_checkpoint_matches_reference(data):
    """Every block's codes and scale as the checkpoint holds them, this rank's scale rows
    (or columns) with its weight rows (or columns), every scale slot written over poison;
    layouts the declared `fp8_block_fusion` cannot hold are refused."""
    run = current()
    case = data.draw(serialized_block_cases(run.capabilities, support=run.support,
                                            device=run.device, tp=True), label="case")
    check_case(case, "P3b block FP8 checkpoint")


@pytest.mark.requires("load", "fp8_block_serialized")
@fewest
@given(data=st.data())
def test_block_scale_of_the_wrong_shape_is_refused(data):
    """A weight_scale_inv with one block row too many is a shape error naming its key."""
    run = current()
    case = data.draw(serialized_block_cases(run.capabilities, support=run.support,
                                            device=run.device, wrong_scale_shape=True),
                     label="case")
    check_case(case, "P3b block FP8 checkpoint")


@pytest.mark.requires("load", "fp8_block_serialized", "fused_on_disk")
@fewest
@given(data=st.data())
def test_block_fp8_fused_and_split_on_disk_agree(data):
    """One block FP8 model fused on disk (stacked scale rows) and split on disk loads alike
    (two loads by the candidate: each layout against the reference is the checkpoint
    property's business)."""
    run = current()
    case = data.draw(serialized_block_cases(run.capabilities, support=run.support,
                                            device=run.device, fused_on_disk=True), label="case")
    count_example()
    with written(case.plan) as fused_dir, written(replace(case.plan, fused=False)) as split_dir:
        fused, split = (candidate_call(lambda d=d: run.candidate.load(
            str(d), case.plan.spec, case.options)) for d in (fused_dir, split_dir))
    fail_if_states_differ(split, fused, "P3b block FP8 fused/split", case,
                          "fused-on-disk and split-on-disk block FP8 checkpoints differ")


@pytest.mark.requires("load", "tp")
@fewer
@given(data=st.data())
def test_block_fp8_ranks_gathered_equal_tp1(data):
    """Every rank of a block layout the model can split on block boundaries, gathered,
    equals the tp=1 load: weights and scale grids (serialized or online, as claimed)."""
    run = current()
    kinds = [k for k, cap in (("serialized", "fp8_block_serialized"),
                              ("online", "fp8_block_online")) if cap in run.capabilities]
    if not kinds:
        pytest.skip("loader claims neither fp8_block_serialized nor fp8_block_online")
    count_example()
    kind = data.draw(st.sampled_from(kinds), label="kind")
    cases = serialized_block_cases if kind == "serialized" else online_block_cases
    case = data.draw(cases(run.capabilities, support=run.support, device=run.device, tp=True,
                           aligned=True), label="case")
    tp_size = case.options.tp_size
    if tp_size == 1:
        return
    spec, block = case.plan.spec, block_of(case.plan.spec, case.options)
    with written(case.plan) as directory:
        whole = candidate_call(lambda: run.candidate.load(
            str(directory), spec, replace(case.options, tp_size=1, tp_rank=0)))
        ranks = [candidate_call(lambda r=r: run.candidate.load(
            str(directory), spec, replace(case.options, tp_rank=r))) for r in range(tp_size)]
        if whole.result is None or any(r.result is None for r in ranks):
            return  # errors are the single-load properties' business
        gathered = gather_ranks(spec, [r.result.state for r in ranks],
                                run.reference.variants["vocab_shards"], block)
        divergences = compare_states(whole.result.state, gathered,
                                     where=lambda n: f"{tp_size} ranks gathered vs tp=1")
        fail_on(refine_quantized(divergences, whole.result.state, gathered, spec, case.options),
                "P3b block FP8 TP", case, directory,
                title=f"{tp_size} ranks gathered differ from the tp=1 load")


@pytest.mark.requires("load", "fp8_block_online")
@fewer
@given(data=st.data())
def test_online_block_fp8_matches_reference(data):
    """Online block quantization after loading: the reference's codes and scale grid per
    matrix, partial edge blocks and zero blocks included, under the declared scale
    operation and floor."""
    run = current()
    case = data.draw(online_block_cases(run.capabilities, support=run.support,
                                        device=run.device, tp=True), label="case")
    check_case(case, "P4b online block FP8")


@pytest.mark.requires("load", "fp8_block_online")
@fewest
@given(data=st.data())
def test_online_block_fp8_round_trips_within_half_a_code_step(data):
    """Whatever the variants: every block dequantizes to within half a code step (at its
    own scale) of the float weights it came from, and a zero block to exactly 0 with a
    finite scale."""
    run = current()
    count_example()
    case = data.draw(online_block_cases(run.capabilities, support=run.support,
                                        device=run.device), label="case")
    with written(case.plan) as directory:
        plain = replace(case.options, quantize=None, quant_block=None)
        weights = run_outcome(lambda: run.reference.load(str(directory), case.plan.spec, plain))
        found = candidate_call(lambda: run.candidate.load(str(directory), case.plan.spec,
                                                          case.options))
        if weights.result is None or found.result is None:
            return  # error agreement is test_online_block_fp8_matches_reference's job
        fail_on(block_round_trip_divergences(weights.result.state, found.result.state,
                                             case.plan.spec, case.options.quant_block),
                "P4b block FP8 round trip", case, directory)


@pytest.mark.requires("load", "fp8_block_serialized", "reload")
@fewest
@given(data=st.data())
def test_block_fp8_reload_equals_fresh_load(data):
    """load(A); reload(B) of a block FP8 checkpoint ≡ load(B): codes and scale grids."""
    run = current()
    count_example()
    first = data.draw(serialized_block_cases(run.capabilities, support=run.support,
                                             device=run.device), label="A")
    options = replace(first.options, track=False, poison=False)
    seed = data.draw(st.integers(0, 2**16).filter(lambda s: s != first.plan.data_seed),
                     label="B seed")
    first, second = LoadCase(first.plan, options), LoadCase(replace(first.plan, data_seed=seed),
                                                            options)
    with written(first.plan) as dir_a, written(second.plan) as dir_b:
        _, loaded = load_both(first, dir_a)
        fresh = run_outcome(lambda: run.reference.load(str(dir_b), second.plan.spec, options))
        if loaded.result is None or fresh.result is None:
            return
        reloaded = candidate_call(lambda: run.candidate.reload(
            loaded.result, str(dir_b), second.plan.spec, options))
        if reloaded.error is not None:
            fail_on([Divergence("error", "reload", f"reload raised: {reloaded.describe()}")],
                    "P5b block FP8 reload", second, dir_b)
            return
        state = reloaded.result.state
        fail_on(refine_quantized(compare_states(fresh.result.state, state,
                                                where=lambda n: "reload(B) vs load(B)"),
                                 fresh.result.state, state, second.plan.spec, options),
                "P5b block FP8 reload", second, dir_b,
                title="reload(B) differs from a fresh load of B")
