"""Host -> device copy throughput of the reference prefetch offloader against the pinned-
memory bandwidth the machine shows (raw `copy_` from a pinned host tensor). CUDA only:
without a GPU every benchmark here skips with one line. What is timed lives in
`benchmarks/offload_copy.py`, which also times it without pytest-benchmark.

Run: python -m pytest benchmarks/test_offload_copy.py --benchmark-columns=min,median
"""

from __future__ import annotations

import pytest
import torch

from .offload_copy import (PROBE, ROUNDS, WARMUP_ROUNDS, gbps, offloaded_model,
                           onload_and_release, pinned_copy)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the offload copy benchmark needs one")


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    return offloaded_model(tmp_path_factory.mktemp("offload") / "checkpoint")


def _gbps(benchmark, nbytes: int) -> None:
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s (median)"] = gbps(nbytes, benchmark.stats.stats.median)


def test_pinned_copy_bandwidth(benchmark, offloaded):
    _, nbytes = offloaded
    benchmark.pedantic(pinned_copy(nbytes), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    _gbps(benchmark, nbytes)


def test_offloader_onload_throughput(benchmark, offloaded):
    handle, nbytes = offloaded
    benchmark.pedantic(onload_and_release(handle), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    _gbps(benchmark, nbytes)
    assert handle.placement()[PROBE] == "host"
