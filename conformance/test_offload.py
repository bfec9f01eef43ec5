"""Offloading (P9, seed 002's home): offloaded ≡ resident, bit for bit, for every onloaded
tensor and for the logits, *and* every parameter's storage is where the plan says: on the
host between uses, on the device while its layer runs (an offloader that silently does
nothing passes an output-equality test, so placement is checked too). The candidate's
placement report is itself checked against its storages (conformance/verify.py): device,
and on the host which storage, between uses and while each layer runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from generators.cases import LoadCase, load_cases
from generators.checkpoints import checkpoint_plans
from generators.specs import any_dtype, extra_params, model_specs
from reference.contract import OffloadPlan
from reference.dtypes import clone_bytes
from .compare import Divergence, compare_states
from .harness import candidate_call, count_example, fail_on, load_both, written
from .session import current
from .verify import placement_of_storage, storages

FILTERS = ((), ("mlp",), ("self_attn",), ("mlp.down_proj",), ("input_layernorm",),
           ("self_attn.qkv_proj", "mlp.gate_up_proj"))


def _placement_divergences(want: dict, got: dict, when: str, dtypes: dict) -> list[Divergence]:
    return [Divergence("placement", name, f"{name}: storage on the {got.get(name)} {when}, "
                       f"expected the {where} ({dtypes.get(name)})",
                       {"expected": where, "found": got.get(name), "dtype": dtypes.get(name)})
            for name, where in sorted(want.items()) if got.get(name) != where]


@pytest.mark.requires("load", "offload", "forward")
@given(data=st.data())
def test_offloaded_equals_resident_and_lives_on_the_host(data):
    run = current()
    count_example()
    # Packed int32 weights, zero points, masks and FP8 tensors inside offloaded layers too.
    spec = data.draw(model_specs(support=run.support, max_layers=4, extras="extras" in run.capabilities,
                                 extras_in_layers=True, extra_strategy=extra_params(
                                     min_count=1, max_count=4, dtypes=any_dtype)), label="spec")
    plan = data.draw(checkpoint_plans(spec, fused_choices=(spec.fused_on_disk_natively,),
                                      max_shards=2), label="checkpoint")
    options = data.draw(load_cases(run.capabilities, support=run.support, device=run.device), label="options").options
    group = data.draw(st.integers(1, 3), label="group_size")
    offload = OffloadPlan(group_size=group,
                          offload_per_group=data.draw(st.integers(1, group), label="per group"),
                          prefetch_step=data.draw(st.integers(0, 2), label="prefetch_step"),
                          param_filter=data.draw(st.sampled_from(FILTERS), label="filter"))
    ids = torch.tensor([data.draw(st.lists(st.integers(0, spec.vocab_size - 1), min_size=1,
                                           max_size=5), label="input_ids")], device=run.device)
    # Offloading a quantized model after a reload (the processed tensors must move too).
    quantized = data.draw(st.booleans(), label="online FP8, then reload") if {
        "fp8_online", "reload"} <= run.capabilities else False
    if quantized:
        options = replace(options, quantize="fp8")
    case = LoadCase(plan, options)
    title = offload.summary() + ("; online FP8, reloaded" if quantized else "")
    with written(plan) as directory, written(replace(plan, data_seed=plan.data_seed + 1)) as other:
        expected, found = load_both(case, directory)
        if expected.result is None or found.result is None:
            return  # loading itself is the loading properties' business
        if quantized:
            expected.result = run.reference.reload(expected.result, str(other), spec, options)
            reloaded = candidate_call(lambda: run.candidate.reload(found.result, str(other),
                                                                   spec, options))
            if reloaded.error is not None:
                return  # reload itself is test_reload's business
            found.result = reloaded.result
        resident = {n: clone_bytes(t) for n, t in found.result.state.items()}
        dtypes = {n: str(t.dtype) for n, t in resident.items()}
        resident_logits = run.candidate.forward(found.result, ids).float().cpu()
        reference = run.reference.offload(expected.result, offload)
        want = reference.placement()
        handle = candidate_call(lambda: run.candidate.offload(found.result, offload))
        if handle.error is not None:
            fail_on([Divergence("error", "offload", f"offload raised {handle.describe()}")],
                    "P9 offload", case, directory, title=title)
            return  # known to the baseline (fail_on returned): nothing more to compare
        offloaded = handle.result
        home_report, home = offloaded.placement(), storages(offloaded.state())
        home = {n: s for n, s in storages(offloaded.state()).items() if home.get(n) == s}

        def verified(when: str) -> list[Divergence]:
            return placement_of_storage(offloaded.placement(), storages(offloaded.state()),
                                        home_report, home, run.device, when)
        divergences = _placement_divergences(want, home_report, "between uses", dtypes)
        divergences += verified("between uses")
        for layer in range(spec.num_layers):
            reference.onload(layer)
            offloaded.onload(layer)
            divergences += _placement_divergences(
                {n: w for n, w in reference.placement().items() if f"layers.{layer}." in n},
                offloaded.placement(), f"while layer {layer} is onloaded", dtypes)
            divergences += verified(f"while layer {layer} is onloaded")
            divergences += compare_states(
                {n: t for n, t in resident.items() if f"layers.{layer}." in n},
                {n: t for n, t in offloaded.state().items() if f"layers.{layer}." in n},
                where=lambda n: f"onloaded from the host, layer {layer}")
            reference.release(layer)
            offloaded.release(layer)
        divergences += _placement_divergences(want, offloaded.placement(), "after release", dtypes)
        divergences += verified("after release")
        logits = candidate_call(lambda: offloaded.forward(ids))
        if logits.error is not None:
            divergences.append(Divergence("error", "forward", f"offloaded forward raised "
                                          f"{logits.describe()}"))
        elif not torch.equal(logits.result.float().cpu(), resident_logits):
            diff = (logits.result.float().cpu() - resident_logits).abs().max().item()
            divergences.append(Divergence("logits", "logits", f"offloaded logits differ from "
                                          f"resident ones (max abs diff {diff:.3g})",
                                          {"max_abs_diff": diff}))
        divergences += _placement_divergences(want, offloaded.placement(), "after forward", dtypes)
        fail_on(divergences[:20], "P9 offload", case, directory, title=title)
