"""Reload (P5, seed 001's home): load(A); reload(B) ≡ fresh load(B), bit for bit, for plain,
online-quantized and serialized-FP8 models; reloading twice ≡ once; the storages of every
tensor stay where they were (CUDA graphs hold their addresses); reloading some layers
changes only those layers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from generators.cases import LoadCase
from generators.fp8 import reload_cases
from reference.names import layout_keys
from .compare import Divergence, compare_states, run_outcome
from .profiles import fewer_examples
from .quant_compare import refine_quantized
from .harness import candidate_call, count_example, fail_on, load_both, written
from .session import current


def _divergences(case: LoadCase, expected, found, title: str) -> list[Divergence]:
    divergences = compare_states(expected, found, where=lambda n: title)
    return refine_quantized(divergences, expected, found, case.plan.spec, case.options)


def _moved(before: dict[str, int], state) -> list[Divergence]:
    return [Divergence("placement", name, f"{name}: its storage moved during reload "
                       f"(data_ptr {before[name]:#x} -> {t.data_ptr():#x}); CUDA graphs and "
                       f"kernels captured the old address", {"expected": before[name],
                                                             "found": t.data_ptr()})
            for name, t in state.items() if name in before and t.data_ptr() != before[name]]


def _reload(run, result, directory, case: LoadCase):
    __tracebackhide__ = True
    return candidate_call(lambda: run.candidate.reload(result, str(directory), case.plan.spec,
                                                       case.options))


@pytest.mark.requires("load", "reload")
@given(data=st.data())
def test_reload_equals_fresh_load(data):
    """load(A); reload(B) ≡ load(B); reload(B) again changes nothing; no storage moves."""
    run = current()
    count_example()
    first, second = data.draw(reload_cases(run.capabilities, run.device, support=run.support),
                              label="cases")
    with written(first.plan) as dir_a, written(second.plan) as dir_b:
        _, loaded = load_both(first, dir_a)
        fresh = run_outcome(lambda: run.reference.load(str(dir_b), second.plan.spec,
                                                       second.options))
        if loaded.result is None or fresh.result is None:
            return  # the load itself is other properties' business
        before = {n: t.data_ptr() for n, t in loaded.result.state.items()}
        reloaded = _reload(run, loaded.result, dir_b, second)
        if reloaded.error is not None:
            fail_on([Divergence("error", "reload", f"reload raised: {reloaded.describe()}")],
                    "P5 reload", second, dir_b)
            return  # known to the baseline (fail_on returned)
        state = reloaded.result.state
        fail_on(_divergences(second, fresh.result.state, state, "after load(A); reload(B), "
                             "against a fresh load of B") + _moved(before, state),
                "P5 reload", second, dir_b, title="reload(B) differs from a fresh load of B")
        again = _reload(run, reloaded.result, dir_b, second)
        if again.result is not None:
            fail_on(_divergences(second, fresh.result.state, again.result.state,
                                 "after reloading B twice") + _moved(before, again.result.state),
                    "P5 reload", second, dir_b, title="reloading twice differs from once")


@pytest.mark.requires("load", "reload")
@fewer_examples(4)
@given(data=st.data())
def test_reload_of_some_layers_changes_only_those(data):
    """A checkpoint holding some decoder layers (and nothing else) changes exactly those
    layers; everything else keeps A's values, and biases and norms survive the processing."""
    run = current()
    count_example()
    first, second = data.draw(reload_cases(run.capabilities, run.device, support=run.support),
                              label="cases")
    spec = first.plan.spec
    layers = data.draw(st.lists(st.integers(0, spec.num_layers - 1), min_size=1, unique=True),
                       label="layers reloaded")
    keep = tuple(f"model.layers.{i}." for i in layers)
    dropped = tuple(k for k in layout_keys(spec, second.plan.fused) if not k.startswith(keep))
    partial = LoadCase(replace(second.plan, dropped=dropped), second.options)
    with written(first.plan) as dir_a, written(partial.plan) as dir_b:
        expected_a, loaded = load_both(first, dir_a)
        if loaded.result is None or expected_a.result is None:
            return
        before = {n: t.data_ptr() for n, t in loaded.result.state.items()}
        want = run.reference.reload(expected_a.result, str(dir_b), spec, partial.options)
        reloaded = _reload(run, loaded.result, dir_b, partial)
        if reloaded.error is not None:
            fail_on([Divergence("error", "reload", f"reload of layers {sorted(layers)} raised: "
                                f"{reloaded.describe()}")], "P5 reload", partial, dir_b)
            return  # known to the baseline (fail_on returned)
        fail_on(_divergences(partial, want.state, reloaded.result.state,
                             f"after load(A); reload(layers {sorted(layers)} of B)")
                + _moved(before, reloaded.result.state),
                "P5 reload", partial, dir_b,
                title=f"reloading layers {sorted(layers)} changed more, or less, than those")
