"""Host -> device copy throughput of the reference prefetch offloader against the pinned-
memory bandwidth the machine shows (raw `copy_` from a pinned host tensor). CUDA only:
without a GPU every benchmark here skips with one line.

Run: python -m pytest benchmarks/test_offload_copy.py --benchmark-columns=min,median
"""

from __future__ import annotations

import pytest
import torch

from reference.contract import LoadOptions, ModelSpec, OffloadPlan
from reference.loading import ReferenceLoader
from reference.names import to_checkpoint_tensors
from reference.checkpoint import write_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the offload copy benchmark needs one")

# ~64 MB per layer in bfloat16, 4 layers, every layer offloaded.
SPEC = ModelSpec(family="llama", vocab_size=1024, hidden_size=2048, intermediate_size=5632,
                 num_layers=4, num_heads=16, num_kv_heads=4, head_dim=128, dtype="bfloat16")


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("offload") / "checkpoint"
    gen = torch.Generator().manual_seed(0)
    canonical = {n: torch.randn(s, generator=gen).to(torch.bfloat16)
                 for n, s in SPEC.parameter_shapes().items()}
    write_checkpoint(directory, SPEC.to_hf_config(),
                     [sorted(to_checkpoint_tensors(SPEC, canonical, False).items())])
    loader = ReferenceLoader()
    result = loader.load(str(directory), SPEC, LoadOptions(device="cuda"))
    handle = loader.offload(result, OffloadPlan(group_size=1, offload_per_group=1))
    layer_bytes = sum(h.numel() * h.element_size() for n, h in handle.host.items()
                      if n.startswith("model.layers.0."))
    return handle, layer_bytes


def _gbps(benchmark, nbytes: int) -> None:
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s (median)"] = nbytes / benchmark.stats.stats.median / 1e9


def test_pinned_copy_bandwidth(benchmark, offloaded):
    _, nbytes = offloaded
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def copy():
        device.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
    benchmark.pedantic(copy, rounds=20, warmup_rounds=2)
    _gbps(benchmark, nbytes)


def test_offloader_onload_throughput(benchmark, offloaded):
    handle, nbytes = offloaded

    def onload_and_release():
        handle.onload(0)
        handle.wait(0)
        torch.cuda.synchronize()
        handle.release(0)
    benchmark.pedantic(onload_and_release, rounds=20, warmup_rounds=2)
    _gbps(benchmark, nbytes)
    assert handle.placement()["model.layers.0.mlp.up_proj.weight"] == "host"
