"""How the reference's load cost grows with the checkpoint (0.25, 0.5, 1, 2 GiB), against raw
safetensors and the real loaders' own load of the same checkpoint, side by side in one run.

Run with ``python -m pytest benchmarks/test_load_growth.py -p no:cacheprovider -s``
(``LOADCHECK_GROWTH_GIB=0.25,1`` picks sizes; real loaders run at 1 GiB, or at the largest
size asked for below it). Nothing asserts on time; every variant's bytes are checked
against the checksum computed when writing.

The checkpoints: a bfloat16 llama (hidden 1024, intermediate 4096, 16 / 4 heads x 64,
vocab 8192, untied) with as many layers as bring it nearest the size; split on disk (q/k/v
and gate/up separate, as HF writes them) in shards of at most ~0.5 GB (two at least), keys sorted as the
safetensors library writes them (so k, o, q, v: q/k/v are not adjacent on disk).
"load" is load and then read every byte (`touch`), from a warm page cache. At each size the
variants run in interleaved rounds (each round loads every variant once, the order
rotating), so that the other processes of a shared machine disturb all of them alike; CPU
time is recorded beside wall time for the same reason.

Variants: `safetensors` (load_file, mmap), `reference_fused` (the default: fused q/k/v and
gate/up in memory, stitched file mappings), `reference_split`, and, at one size,
`transformers` (`AutoModelForCausalLM.from_pretrained`, touching its `state_dict()`) and
`accelerate` (`init_empty_weights` + `load_checkpoint_in_model`). vLLM's loader needs its own
environment (`tox -e vllm`); it is measured only where `import vllm` works, and is reported
as absent otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from reference.checkpoint import write_checkpoint
from reference.contract import LoadOptions, ModelSpec
from reference.loading import ReferenceLoader
from reference.names import to_checkpoint_tensors
from .test_load_throughput import Bench, describe, load_safetensors, measure_peak, touch

pytestmark = pytest.mark.benchmark

# Imported here, when present, so that the peak-memory subprocess (which imports this module
# before resetting its high-water mark) does not count the libraries' own import.
for _library in ("transformers", "accelerate"):
    if importlib.util.find_spec(_library) is not None:
        importlib.import_module(_library)
        importlib.import_module("transformers.models.llama.modeling_llama")

GIB = 2**30
SIZES_GIB = tuple(float(x) for x in os.environ.get("LOADCHECK_GROWTH_GIB",
                                                   "0.25,0.5,1,2").split(","))
REAL_LOADERS_AT_GIB = max([s for s in SIZES_GIB if s <= 1] or [min(SIZES_GIB)])
SHARD_BYTES = 512 * 10**6
ROUNDS = int(os.environ.get("LOADCHECK_GROWTH_ROUNDS", "5"))
_BASE = dict(family="llama", vocab_size=8192, hidden_size=1024, intermediate_size=4096,
             num_heads=16, num_kv_heads=4, head_dim=64, dtype="bfloat16")


def spec_for(gib: float) -> ModelSpec:
    shapes1 = ModelSpec(num_layers=1, **_BASE).parameter_shapes()
    shapes2 = ModelSpec(num_layers=2, **_BASE).parameter_shapes()
    size = lambda shapes: 2 * sum(torch.Size(s).numel() for s in shapes.values())  # noqa: E731
    per_layer, fixed = size(shapes2) - size(shapes1), 2 * size(shapes1) - size(shapes2)
    layers = max(1, round((gib * GIB - fixed) / per_layer))
    return ModelSpec(num_layers=layers, **_BASE)


def write_growth_checkpoint(directory: Path, spec: ModelSpec) -> Bench:
    """Values: one seeded normal pool, rolled per tensor (randn of 2 GiB would take minutes
    here); every tensor differs from every other, which is all a bitwise check needs."""
    pool = torch.randn(2**22 + 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    canonical = {}
    for i, (name, shape) in enumerate(spec.parameter_shapes().items()):
        n = torch.Size(shape).numel()
        reps = -(-n // pool.numel())
        canonical[name] = pool.roll(i * 9973).repeat(reps)[:n].reshape(shape).clone()
    tensors = to_checkpoint_tensors(spec, canonical, fused=False)
    del canonical
    total = sum(t.numel() * 2 for t in tensors.values())
    limit = min(SHARD_BYTES, total // 2 + 1)  # always an index: at least two shards
    shards, size = [[]], 0
    for key in sorted(tensors):  # the safetensors library's order: by name
        nbytes = tensors[key].numel() * 2
        if size and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((key, tensors[key]))
        size += nbytes
    checksum = touch(tensors)
    write_checkpoint(directory, spec.to_hf_config(), shards)
    return describe(directory, checksum)


# ----- the variants -------------------------------------------------------------------------
def load_reference_fused(bench: Bench) -> dict[str, torch.Tensor]:
    return dict(ReferenceLoader().load(str(bench.directory), bench.spec, LoadOptions()).state)


def load_reference_split(bench: Bench) -> dict[str, torch.Tensor]:
    return dict(ReferenceLoader(fused_params=False).load(str(bench.directory), bench.spec,
                                                         LoadOptions()).state)


def load_transformers(bench: Bench) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(bench.directory), dtype=torch.bfloat16)
    return dict(model.state_dict())


def load_accelerate(bench: Bench) -> dict[str, torch.Tensor]:
    from accelerate import init_empty_weights, load_checkpoint_in_model
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(str(bench.directory))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    load_checkpoint_in_model(model, str(bench.directory), device_map={"": "cpu"})
    return dict(model.state_dict())


def load_vllm(bench: Bench) -> dict[str, torch.Tensor]:  # pragma: no cover - tox -e vllm only
    from conformance.adapters.vllm import loader
    return dict(loader.load(str(bench.directory), bench.spec, LoadOptions()).state)


VARIANTS: dict[str, Callable[[Bench], dict[str, torch.Tensor]]] = {
    "safetensors": load_safetensors, "reference_fused": load_reference_fused,
    "reference_split": load_reference_split, "transformers": load_transformers,
    "accelerate": load_accelerate, "vllm": load_vllm,
}
_AVAILABLE = {"transformers": "transformers", "accelerate": "accelerate", "vllm": "vllm"}


def _available(variant: str) -> bool:
    module = _AVAILABLE.get(variant)
    return module is None or importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    made: dict[float, Bench] = {}

    def get(gib: float) -> Bench:
        if gib not in made:
            made[gib] = write_growth_checkpoint(tmp_path_factory.mktemp(f"growth_{gib}"),
                                                spec_for(gib))
        return made[gib]
    yield get


_ROWS: dict[tuple[float, str], dict[str, float]] = {}
_CORE = ("safetensors", "reference_fused", "reference_split")
_REAL = ("transformers", "accelerate", "vllm")


def _timed(load: Callable[[Bench], dict], bench: Bench) -> tuple[float, float]:
    """One load + touch: (wall s, CPU s of this process: user + system, on a shared
    machine less sensitive than wall time to what the other processes do)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    tensors = load(bench)
    checksum = touch(tensors)
    elapsed, used = time.perf_counter() - start, time.process_time() - start_cpu
    del tensors
    assert checksum == bench.checksum, "bytes differ from those written"
    return elapsed, used


@pytest.mark.parametrize("gib", SIZES_GIB, ids=[f"{g}GiB" for g in SIZES_GIB])
def test_growth(gib, checkpoints):
    """Every variant at this size, in interleaved rounds: one warm-up each, then ROUNDS
    rounds that each load every variant once, the order rotating between rounds (A/B
    interleaving: a burst of load from the other processes hits all variants alike)."""
    variants = list(_CORE) + (list(_REAL) if gib == REAL_LOADERS_AT_GIB else [])
    for variant in [v for v in variants if not _available(v)]:
        _ROWS[(gib, variant)] = {"absent": 1.0}
    variants = [v for v in variants if _available(v)]
    bench = checkpoints(gib)
    for variant in variants:
        _timed(VARIANTS[variant], bench)
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(ROUNDS):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            w, c = _timed(VARIANTS[variant], bench)
            wall[variant].append(w)
            cpu[variant].append(c)
    for variant in variants:
        peak = measure_peak(variant, bench, module=__name__)
        assert peak["checksum"] == bench.checksum
        times, used = sorted(wall[variant]), sorted(cpu[variant])
        _ROWS[(gib, variant)] = {"bytes": bench.nbytes, "median_s": times[len(times) // 2],
                                 "min_s": times[0], "max_s": times[-1],
                                 "cpu_s": used[len(used) // 2], "peak": peak["delta"]}


def test_zz_print_table(request):
    """Last: the table, ratios within this run (vs st: safetensors' median time over this
    variant's, same size; >1 is faster; cpu vs st the same for CPU time)."""
    load = os.getloadavg()
    lines = ["", f"load growth ({ROUNDS} interleaved rounds after a warm-up; load + touch every "
                 "byte; warm page cache; GB = 1e9 B; peak = VmHWM delta / checkpoint bytes; "
                 f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
                 f"{os.cpu_count()} CPUs)",
             f"{'GiB':>5} {'variant':<16}{'bytes':>14}{'median ms':>11}{'min':>9}{'max':>9}"
             f"{'GB/s':>7}{'vs st':>7}{'s/GB':>7}{'cpu ms':>9}{'cpu vs st':>10}{'peak/ckpt':>10}"]
    order = _CORE + _REAL
    for (gib, variant), row in sorted(_ROWS.items(),
                                      key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        if "absent" in row:
            lines.append(f"{gib:>5} {variant:<16}  not measured: not installed in this environment")
            continue
        base = _ROWS.get((gib, "safetensors"))
        ratio = base["median_s"] / row["median_s"] if base else float("nan")
        cpu_ratio = base["cpu_s"] / row["cpu_s"] if base else float("nan")
        gbps = row["bytes"] / row["median_s"] / 1e9
        lines.append(f"{gib:>5} {variant:<16}{row['bytes']:>14,}{row['median_s'] * 1e3:>11.1f}"
                     f"{row['min_s'] * 1e3:>9.1f}{row['max_s'] * 1e3:>9.1f}{gbps:>7.2f}"
                     f"{ratio:>7.2f}{row['median_s'] / row['bytes'] * 1e9:>7.3f}"
                     f"{row['cpu_s'] * 1e3:>9.0f}{cpu_ratio:>10.2f}"
                     f"{row['peak'] / row['bytes']:>10.3f}")
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("LOADCHECK_GROWTH_TABLE")
    if out:
        Path(out).write_text(text + "\n")
