"""One bug does not mask another: a loader with two unrelated bugs gets both reported,
each shrunk on its own, from one run of one property."""

from __future__ import annotations

import re

from conformance.compare import Divergence
from conformance.failures import failure_type, tensor_kind
from tests.mutation import run_suite


def test_two_unrelated_bugs_are_both_reported_from_one_run(tmp_path):
    run = run_suite("tests.two_bug_mutant",
                    "conformance/test_loading.py::test_load_matches_reference", records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    assert re.search(r"found 2 distinct failures", run.output), run.output[-3000:]
    final = [r for r in run.records_of("test_load_matches_reference") if r["stage"] == "final"]
    said = [" ".join(d["message"] for d in r["divergences"]) for r in final]
    assert any("k_proj.bias" in s and "poison" in s for s in said), said
    assert any(".extras." in s for s in said), said
    assert "DivergenceFailure[P2 coverage: tensor of bias]" in run.output
    assert "DivergenceFailure[P2 coverage: tensor of extra]" in run.output


def test_failure_types_are_per_property_and_kind():
    bias = [Divergence("tensor", "model.layers.0.self_attn.k_proj.bias", "m")]
    norm = [Divergence("tensor", "model.layers.0.input_layernorm.weight", "m")]
    assert failure_type("P2", bias) is failure_type("P2", list(bias))  # same kind, same type
    assert failure_type("P2", bias) is not failure_type("P2", norm)
    assert failure_type("P2", bias) is not failure_type("order", bias)
    assert issubclass(failure_type("P2", bias), AssertionError)
    # the most severe divergence decides, whatever its position
    critical = Divergence("error", "x.safetensors", "m", {"expected_family": "unsafe_checkpoint",
                                                          "found_family": "ok"}, "critical")
    assert failure_type("P11", norm + [critical]) is failure_type("P11", [critical])
    assert [tensor_kind(n) for n in ("model.embed_tokens.weight", "lm_head.weight",
                                     "model.norm.weight", "model.layers.1.mlp.up_proj.weight",
                                     "model.layers.0.self_attn.q_proj.weight_scale",
                                     "model.extras.int8_0", "loaded")] == [
        "embedding", "head", "norm", "weight", "fp8 scale", "extra", ""]
