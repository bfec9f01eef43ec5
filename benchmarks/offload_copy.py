"""What the offload copy benchmark measures: the reference prefetch offloader's host ->
device onload of one layer (side stream, events, pinned host copies) against a raw `copy_`
of as many bytes from a pinned host tensor (the bandwidth the machine shows). CUDA only.

`benchmarks/test_offload_copy.py` times these with pytest-benchmark. Where that plugin is
not installed (a bare GPU machine), `python -m benchmarks.offload_copy --json PATH` times
the same calls directly, the same way (wall clock around a call that synchronizes), and
writes the figures in pytest-benchmark's JSON shape, so `./run gpu-check` reads either.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from reference.checkpoint import write_checkpoint
from reference.contract import LoadOptions, ModelSpec, OffloadPlan
from reference.loading import ReferenceLoader
from reference.names import to_checkpoint_tensors
from reference.offload import PrefetchOffloader

__all__ = ["SPEC", "ROUNDS", "WARMUP_ROUNDS", "offloaded_model", "pinned_copy",
           "onload_and_release", "gbps", "main"]

# ~64 MB per layer in bfloat16, 4 layers, every layer offloaded.
SPEC = ModelSpec(family="llama", vocab_size=1024, hidden_size=2048, intermediate_size=5632,
                 num_layers=4, num_heads=16, num_kv_heads=4, head_dim=128, dtype="bfloat16")
ROUNDS, WARMUP_ROUNDS = 20, 2
PROBE = "model.layers.0.mlp.up_proj.weight"  # must be back on the host after a release


def offloaded_model(directory: Path) -> tuple[PrefetchOffloader, int]:
    """SPEC's checkpoint written to `directory`, loaded onto CUDA by the reference and
    offloaded layer by layer; the handle and the bytes of layer 0's offloaded parameters."""
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


def pinned_copy(nbytes: int) -> Callable[[], None]:
    """One raw host -> device copy of `nbytes` from pinned memory, synchronized."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def copy() -> None:
        device.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
    return copy


def onload_and_release(handle: PrefetchOffloader) -> Callable[[], None]:
    """Layer 0 onloaded through the offloader's side stream, waited for, and released."""
    def cycle() -> None:
        handle.onload(0)
        handle.wait(0)
        torch.cuda.synchronize()
        handle.release(0)
    return cycle


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def _timed(name: str, fn: Callable[[], None], nbytes: int) -> dict:
    for _ in range(WARMUP_ROUNDS):
        fn()
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"name": name, "fullname": f"benchmarks/test_offload_copy.py::{name}",
            "stats": {"min": min(times), "median": median, "max": max(times),
                      "mean": statistics.fmean(times), "rounds": ROUNDS},
            "extra_info": {"bytes": nbytes, "GB/s (median)": gbps(nbytes, median)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.offload_copy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the figures")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("offload copy benchmark: no CUDA device on this machine", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="loadcheck-offload-") as tmp:
        handle, nbytes = offloaded_model(Path(tmp) / "checkpoint")
        benchmarks = [_timed("test_pinned_copy_bandwidth", pinned_copy(nbytes), nbytes),
                      _timed("test_offloader_onload_throughput", onload_and_release(handle),
                             nbytes)]
        where = handle.placement()[PROBE]
    figures = {"benchmarks": benchmarks, "measured_by": "benchmarks.offload_copy (direct "
               "timing: pytest-benchmark is not installed)"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=2))
    for b in benchmarks:
        print(f"{b['name']}: {b['extra_info']['GB/s (median)']:.2f} GB/s (median of {ROUNDS}, "
              f"{nbytes / 1e6:.0f} MB)")
    if where != "host":
        print(f"offloader: {PROBE} is on the {where} after release, expected the host",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
