"""The reference offloader: vLLM's layer rule, whole-segment filters, and byte-exact round
trips for every dtype inside offloaded layers (packed int32, sub-byte, FP8, bool)."""

from __future__ import annotations

import torch

from generators.checkpoints import CheckpointPlan
from reference.contract import ExtraParam, LoadOptions, ModelSpec, OffloadPlan
from reference.dtypes import clone_bytes
from reference.loading import ReferenceLoader


def test_layer_rule_and_whole_segment_filter():
    plan = OffloadPlan(group_size=3, offload_per_group=2, param_filter=("mlp", "self_attn.o_proj"))
    assert [plan.offloads_layer(i) for i in range(6)] == [False, True, True] * 2
    assert plan.selects("model.layers.1.mlp.up_proj.weight")
    assert plan.selects("model.layers.1.self_attn.o_proj.bias")
    assert not plan.selects("model.layers.1.mlp_extra.up_proj.weight")  # a prefix is no segment
    assert not plan.selects("model.layers.1.self_attn.q_proj.weight")


def test_every_dtype_in_an_offloaded_layer_round_trips_exactly(tmp_path):
    extras = tuple(ExtraParam(f"x{i}", dtype, (3, 4), 1) for i, dtype in enumerate(
        ("int32", "uint4", "int2", "float8_e4m3fn", "float8_e5m2fnuz", "bool",
         "float4_e2m1fn_x2", "uint16")))
    spec = ModelSpec(num_layers=2, extras=extras)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    directory = CheckpointPlan(spec).write(tmp_path / "checkpoint")
    loader = ReferenceLoader()
    result = loader.load(str(directory), spec, LoadOptions(poison=True))
    resident = {n: clone_bytes(t) for n, t in result.state.items()}
    handle = loader.offload(result, OffloadPlan(group_size=2, offload_per_group=1))
    placement = handle.placement()
    assert all(placement[e.canonical_name] == "host" for e in extras), placement
    handle.onload(1)
    for extra in extras:
        name = extra.canonical_name
        assert handle.placement()[name] == "device"
        got = handle.state()[name].reshape(-1).view(torch.uint8)
        assert torch.equal(got, resident[name].reshape(-1).view(torch.uint8)), name
    handle.release(1)
    assert handle.placement()["model.layers.1.extras.x1"] == "host"


def test_filters_select_the_same_canonical_tensors_split_or_fused_in_memory(tmp_path):
    """A filter names canonical modules, and a fused module's name stands for its parts: a
    loader that keeps q/k/v and gate/up split in memory offloads exactly what a fused one does
    (regression: `--loader reference-split` failed the offload property on fused-name filters)."""
    spec = ModelSpec(num_layers=2)
    directory = CheckpointPlan(spec).write(tmp_path / "checkpoint")
    fused, split = ReferenceLoader(), ReferenceLoader(fused_params=False)
    for param_filter in (("self_attn.qkv_proj", "mlp.gate_up_proj"),
                         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                         ("mlp",), ("input_layernorm",), ()):
        plan = OffloadPlan(group_size=2, offload_per_group=1, param_filter=param_filter)
        placements = [loader.offload(loader.load(str(directory), spec, LoadOptions()),
                                     plan).placement() for loader in (fused, split)]
        assert placements[0] == placements[1], param_filter
        hosted = {n for n, where in placements[0].items() if where == "host"}
        assert hosted, param_filter
        assert all(".layers.1." in n for n in hosted), hosted
    assert OffloadPlan(param_filter=("self_attn.qkv_proj",)).selects(
        "model.layers.1.self_attn.k_proj.weight")
    assert not OffloadPlan(param_filter=("mlp.gate_up_proj",)).selects(
        "model.layers.1.mlp.down_proj.weight")
