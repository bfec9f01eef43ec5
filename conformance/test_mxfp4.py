"""MXFP4 (issue 16; reference/quant/mxfp4.py): a serialized MXFP4 checkpoint loads to the
reference's packed codes and E8M0 scale bytes per logical matrix, every byte written
(allocations poisoned first: a scale is never 0xFF, so an unwritten one always shows); the
nibble order and the scale exponent are the checkpoint's (a swapped nibble or a rebiased
scale is a differing code or scale in a named block); split and fused on disk agree; TP
ranks gathered equal tp=1 where each rank's input columns are whole 32-element groups, and
a split inside a group is refused; a scale tensor of the wrong shape is a clear error
naming its key; and the forward of an MXFP4 model unpacks and scales like the reference.

Every property here runs a fifth of the profile's examples (20 in `pr`): MXFP4 must stay
cheap within the pr run's budget, and every MXFP4 mutant is caught inside that
(tests/test_mutants.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from generators.mxfp4 import mxfp4_cases
from reference.tp import gather_ranks
from .compare import Divergence, compare_states
from .harness import (candidate_call, check_case, count_example, fail_if_states_differ, fail_on,
                      load_both, written)
from .quant_compare import refine_quantized
from .profiles import fewer_examples
from .session import current

cheap = fewer_examples(5)


@pytest.mark.requires("load", "mxfp4_serialized")
@cheap
@given(data=st.data())
def test_mxfp4_checkpoint_matches_reference(data):
    """Every packed byte (both nibbles, in order) and every E8M0 scale byte as the checkpoint
    holds them, written over poison; this rank's rows, or its packed columns (/2) and scale
    columns (/32); a TP split inside a 32-element group refused."""
    run = current()
    case = data.draw(mxfp4_cases(run.capabilities, support=run.support, device=run.device,
                                 tp=True), label="case")
    check_case(case, "P3m MXFP4 checkpoint")


@pytest.mark.requires("load", "mxfp4_serialized")
@cheap
@given(data=st.data())
def test_mxfp4_scale_of_the_wrong_shape_is_refused(data):
    """A weight_scale with one row too many is a shape error naming its key."""
    run = current()
    case = data.draw(mxfp4_cases(run.capabilities, support=run.support, device=run.device,
                                 wrong_scale_shape=True), label="case")
    check_case(case, "P3m MXFP4 checkpoint")


@pytest.mark.requires("load", "mxfp4_serialized", "fused_on_disk")
@cheap
@given(data=st.data())
def test_mxfp4_fused_and_split_on_disk_agree(data):
    """One MXFP4 model fused on disk (q/k/v and gate/up packed rows and scale rows stacked)
    and split on disk loads alike."""
    run = current()
    case = data.draw(mxfp4_cases(run.capabilities, support=run.support, device=run.device,
                                 fused_on_disk=True), label="case")
    count_example()
    with written(case.plan) as fused_dir, written(replace(case.plan, fused=False)) as split_dir:
        fused = candidate_call(lambda: run.candidate.load(str(fused_dir), case.plan.spec,
                                                          case.options))
        split = candidate_call(lambda: run.candidate.load(str(split_dir), case.plan.spec,
                                                          case.options))
    fail_if_states_differ(split, fused, "P3m MXFP4 fused/split", case,
                          "fused-on-disk and split-on-disk MXFP4 checkpoints differ")


@pytest.mark.requires("load", "tp", "mxfp4_serialized")
@cheap
@given(data=st.data())
def test_mxfp4_ranks_gathered_equal_tp1(data):
    """Every rank of a model whose row-parallel ranks hold whole 32-element groups,
    gathered (packed columns and scale columns in rank order), equals the tp=1 load."""
    run = current()
    case = data.draw(mxfp4_cases(run.capabilities, support=run.support, device=run.device,
                                 tp=True, aligned=True), label="case")
    count_example()
    tp_size, spec = case.options.tp_size, case.plan.spec
    if tp_size == 1:
        return
    with written(case.plan) as directory:
        whole = candidate_call(lambda: run.candidate.load(
            str(directory), spec, replace(case.options, tp_size=1, tp_rank=0)))
        ranks = [candidate_call(lambda r=r: run.candidate.load(
            str(directory), spec, replace(case.options, tp_rank=r))) for r in range(tp_size)]
        if whole.result is None or any(r.result is None for r in ranks):
            return  # errors are the single-load property's business
        gathered = gather_ranks(spec, [r.result.state for r in ranks],
                                run.reference.variants["vocab_shards"])
        divergences = compare_states(whole.result.state, gathered,
                                     where=lambda n: f"{tp_size} ranks gathered vs tp=1")
        fail_on(refine_quantized(divergences, whole.result.state, gathered, spec, case.options),
                "P3m MXFP4 TP", case, directory,
                title=f"{tp_size} ranks gathered differ from the tp=1 load")


@pytest.mark.requires("load", "forward", "mxfp4_serialized")
@cheap
@given(data=st.data())
def test_mxfp4_forward_unpacks_like_the_reference(data):
    """The logits of an MXFP4 model equal the reference's, which dequantizes every code
    low nibble first at 2^(byte - 127): a loader that keeps the bytes right but unpacks or
    scales them otherwise in its forward is caught here (float32, scales 2^-7 .. 2^0)."""
    run = current()
    count_example()
    case = data.draw(mxfp4_cases(run.capabilities, support=run.support, device=run.device,
                                 forward=True), label="case")
    if case.plan.spec.dtype != "float32":
        return  # a loader that declares no float32 models: nothing compares at this tolerance
    ids = data.draw(st.lists(st.integers(0, case.plan.spec.vocab_size - 1), min_size=1,
                             max_size=4), label="input_ids")
    with written(case.plan) as directory:
        expected, found = load_both(case, directory)
        if expected.result is None or found.result is None:
            return  # error agreement is the checkpoint property's job
        input_ids = torch.tensor([ids], device=case.options.device)
        want = run.reference.forward(expected.result, input_ids).float().cpu()
        got = candidate_call(lambda: run.candidate.forward(found.result, input_ids))
        if got.error is not None:
            problem = f"forward raised {type(got.error).__name__}: {got.error}"
        elif not torch.allclose(logits := got.result.float().cpu(), want, rtol=1e-4, atol=1e-4):
            worst = int((logits - want).abs().flatten().argmax())
            problem = (f"MXFP4 logits differ from the reference's (codes low nibble first, "
                       f"scale 2^(byte - 127)): largest difference "
                       f"{float((logits - want).abs().max()):.4g} at flat index {worst} "
                       f"(expected {float(want.flatten()[worst]):.6g}, found "
                       f"{float(logits.flatten()[worst]):.6g})")
        else:
            return
        fail_on([Divergence("logits", "logits", problem, {"input_ids": ids})],
                "P3m MXFP4 forward", case, directory)
