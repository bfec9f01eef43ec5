"""A loader that supports part of the model zoo declares it (`model_support`), and the suite
tests it on exactly that: no example outside it, the rest listed in the header, and a real
bug inside it still caught."""

from __future__ import annotations

import textwrap

from hypothesis import given, settings

from generators.cases import load_cases
from generators.specs import model_specs
from reference.contract import CAPABILITIES, ModelSpec, ModelSupport, check_loader
from tests.mutation import run_suite

NO_BIAS_NO_TIES = ModelSupport(biases=frozenset(), tied_heads=False, free_head_dim=False,
                               kv_groups=(1, 2), dtypes=("float32", "bfloat16"))

# A loader for a library without biases or tied heads: it refuses them as real ones do,
# and is otherwise the reference (so a clean run must pass).
PARTIAL_ADAPTER = '''
from reference.contract import ModelSupport, UnsupportedLayoutError
from reference.loading import ReferenceLoader


class NoBiasNoTies(ReferenceLoader):
    name = "no-bias-no-ties"
    model_support = ModelSupport(biases=frozenset(), tied_heads=False)

    def load(self, checkpoint, spec, options):
        if spec.attention_bias or spec.mlp_bias or spec.tie_word_embeddings:
            raise UnsupportedLayoutError("biases and tied heads are not supported")
        return super().load(checkpoint, spec, options)
'''
PLANTED_BUG = '''

class WithBug(NoBiasNoTies):
    def copy_slot(self, ckpt, copy, dest, spec, options):  # the fused gate_up's up half
        if ".gate_up_proj." in copy.entry.key and ".up_proj." in copy.slot.canonical:
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = WithBug()
'''


@settings(max_examples=60, deadline=None)
@given(model_specs(support=NO_BIAS_NO_TIES, max_layers=2, tp_size=2))
def test_generated_specs_stay_inside_the_declared_support(spec: ModelSpec):
    assert NO_BIAS_NO_TIES.outside(spec) == []
    assert not (spec.attention_bias or spec.mlp_bias or spec.tie_word_embeddings)
    assert spec.head_dim * spec.num_heads == spec.hidden_size and spec.family != "qwen2"


@settings(max_examples=30, deadline=None)
@given(load_cases(frozenset(CAPABILITIES), tp=True, dtype_override=True,
                  support=NO_BIAS_NO_TIES))
def test_load_cases_stay_inside_the_declared_support(case):
    assert NO_BIAS_NO_TIES.outside(case.plan.spec) == []
    assert case.options.dtype in (None, "float32", "bfloat16")


def test_support_lists_what_is_not_generated_and_is_validated():
    assert ModelSupport().unsupported() == []
    assert NO_BIAS_NO_TIES.unsupported() == [
        "family qwen2", "biases", "head_dim != hidden/heads", "tied heads",
        "4 heads per kv head", "dtype float16"]

    class Odd:
        name, version, capabilities, variants = "odd", "0", frozenset({"load"}), {}
        model_support = ModelSupport(families=("gpt2",), dtypes=("int8",))

        def load(self, checkpoint, spec, options): ...
    problems = " ".join(check_loader(Odd()))
    assert "unknown ['gpt2']" in problems and "dtypes must be some of" in problems


def test_partial_adapter_passes_the_whole_pr_run_and_a_planted_bug_is_caught(tmp_path):
    """The done-when of issue 13: declared, a loader without biases and tied heads passes
    every property (nothing masked); the same adapter with one bug is caught."""
    (tmp_path / "partial_adapter.py").write_text(textwrap.dedent(PARTIAL_ADAPTER)
                                                 + "\n\nloader = NoBiasNoTies()\n")
    clean = run_suite("partial_adapter", "conformance", "-n", "2", "-v",  # -v undoes -q: the header
                      records=tmp_path / "clean", pythonpath=tmp_path)
    assert clean.returncode == 0, clean.output[-4000:]
    assert "loadcheck model support: not generated: family qwen2, biases, tied heads" \
        in clean.output
    assert "failed" not in clean.output.splitlines()[-1], clean.output[-500:]
    # what was left out is counted, and the summary says so
    from reports.records import read_runs
    from reports.summary import run_line
    (run,) = read_runs([tmp_path / "clean"])
    assert run.not_generated.get("tied heads", 0) > 0, run.not_generated
    assert run.not_generated.get("attention biases", 0) > 0, run.not_generated
    assert "not generated (outside the loader's model support): " in run_line(run)

    (tmp_path / "partial_buggy.py").write_text(textwrap.dedent(PARTIAL_ADAPTER) + PLANTED_BUG)
    buggy = run_suite("partial_buggy", "conformance/test_loading.py::test_load_matches_reference",
                      records=tmp_path / "buggy", pythonpath=tmp_path)
    assert buggy.returncode == 1 and "up_proj" in buggy.output, buggy.output[-3000:]
    assert not any("bias" in d["subject"] or d["subject"] == "lm_head.weight"
                   for r in buggy.records_of("test_load_matches_reference")
                   for d in r["divergences"])
