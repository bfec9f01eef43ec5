"""Throughput and peak memory of the reference loader against raw safetensors loading.

Run with ``python -m pytest benchmarks -p no:cacheprovider --benchmark-columns=min,mean,median``.
This directory is not under ``tests/`` and is not a conformance module, so the normal test
commands never collect it; nothing here asserts on time (speed figures live in the
benchmark output), only on correctness (the reference's bytes equal safetensors' bytes).

The checkpoint: a float32 llama spec (hidden 1024, intermediate 2816, 4 layers, 16 query
heads / 4 kv heads x 64, vocab 12288, untied): 70,263,808 parameters = 281,055,232 bytes
of tensor data (~281 MB / 268 MiB), split on disk (q/k/v and gate/up separate, llama's
native layout) across two shards with an index, written once per session.

Every variant is "load, then touch every byte": each tensor's bytes are summed as int64
words (`touch`), so lazy mmap pages are faulted in and every loaded byte is read once.
The same function serves every variant, and its checksum must equal the one computed when
writing.

Page cache: the checkpoint was just written and the warmup round reads it, so every timed
round reads from a warm page cache on both sides; the figures are memory-bound CPU
throughput, not disk throughput. GB means 1e9 bytes.

Peak memory is measured in a fresh subprocess per variant, after all imports: the peak
resident set (VmHWM, reset to the current RSS through /proc/self/clear_refs) at the end
minus the RSS at the reset, so neither the test process nor the imports pollute it. Not
`ru_maxrss`: Linux carries it across execve, so a child of the pytest process starts with
the parent's (multi-GB) high-water mark and every delta reads 0. The peak counts
file-backed pages that are mapped and resident (an mmap load's touched pages) as well as
anonymous memory (a copying load's buffers); RssAnon and RssFile at the end are recorded
too, to tell the two apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import pytest
import torch
from safetensors.torch import load_file

from reference.checkpoint import write_checkpoint
from reference.contract import CONFIG_FILE, INDEX_FILE, LoadOptions, ModelSpec
from reference.loading import ReferenceLoader
from reference.names import to_checkpoint_tensors

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]

# float32: ~281 MB of tensor data (see the module docstring for the arithmetic).
SPEC = ModelSpec(family="llama", vocab_size=12288, hidden_size=1024, intermediate_size=2816,
                 num_layers=4, num_heads=16, num_kv_heads=4, head_dim=64, dtype="float32")
SHARDS = 2
MIN_BYTES = 256 * 10**6
ROUNDS, WARMUP_ROUNDS = 10, 1

# Tensors compared bit for bit after each reference benchmark (a fused-view slice among them).
BITWISE_KEYS = ("model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight",
                "model.layers.3.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight")


# ----- the checkpoint ------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    directory: Path
    spec: ModelSpec
    shard_files: tuple[Path, ...]
    nbytes: int       # bytes of tensor data (what throughput is computed on)
    file_bytes: int   # bytes on disk, headers included
    checksum: int     # touch() of the written tensors


def describe(directory: Path, checksum: int = -1) -> Bench:
    """A written checkpoint directory -> its Bench (spec from config.json, shards from the
    index)."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    spec = ModelSpec.from_dict(config["loadcheck"]["spec"])
    index = json.loads((directory / INDEX_FILE).read_text())
    shard_files = tuple(directory / name for name in sorted(set(index["weight_map"].values())))
    return Bench(directory, spec, shard_files, int(index["metadata"]["total_size"]),
                 sum(p.stat().st_size for p in shard_files), checksum)


def touch(tensors: Mapping[str, torch.Tensor]) -> int:
    """Read every byte of every tensor once; returns their checksum: the sum, mod 2**64, of
    each tensor's bytes taken as little-endian int64 words (a trailing < 8 bytes as uint8).

    int64 words, not a uint8 sum: torch's uint8 sum widens byte by byte and runs at ~0.1 GB/s
    here (2.6 s for 280 MB), which would drown the loads; an int64 sum reads at ~6 GB/s."""
    total = 0
    for tensor in tensors.values():
        raw = tensor.reshape(-1).view(torch.uint8)
        whole = raw.numel() // 8 * 8
        if whole:
            words = raw[:whole]
            if words.storage_offset() % 8:  # never for these checkpoints (8-aligned data)
                words = words.clone()
            total += int(words.view(torch.int64).sum())
        if whole < raw.numel():
            total += int(raw[whole:].sum())
    return total % 2**64


@pytest.fixture(scope="session")
def bench_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    """Write the >= 256 MB, two-shard checkpoint once (torch.randn per tensor, seeded)."""
    gen = torch.Generator().manual_seed(0)
    canonical = {name: torch.randn(shape, generator=gen, dtype=torch.float32)
                 for name, shape in SPEC.parameter_shapes().items()}
    tensors = to_checkpoint_tensors(SPEC, canonical, fused=False)
    del canonical
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    shards: list[list[tuple[str, torch.Tensor]]] = [[] for _ in range(SHARDS)]
    filled = 0
    for key, tensor in tensors.items():  # embed, layers..., norm, head: cut at half the bytes
        shards[min(SHARDS - 1, filled * SHARDS // total)].append((key, tensor))
        filled += tensor.numel() * tensor.element_size()
    assert all(shards), "every shard must hold a tensor"
    checksum = touch(tensors)
    directory = tmp_path_factory.mktemp("bench_ckpt")
    write_checkpoint(directory, SPEC.to_hf_config(), shards)
    del tensors, shards
    bench = describe(directory, checksum)
    assert bench.nbytes == total >= MIN_BYTES, (bench.nbytes, total)
    assert len(bench.shard_files) == SHARDS
    return bench


# ----- the variants (shared by the timed runs and the peak-memory subprocesses) --------------
def load_safetensors(bench: Bench) -> dict[str, torch.Tensor]:
    """Raw safetensors, default (mmap) backend: every shard's tensors."""
    out: dict[str, torch.Tensor] = {}
    for path in bench.shard_files:
        out.update(load_file(path))
    return out


def load_safetensors_pread(bench: Bench) -> dict[str, torch.Tensor]:
    """Supplementary: safetensors' pread backend (copies into fresh buffers, as the reference
    does)."""
    out: dict[str, torch.Tensor] = {}
    for path in bench.shard_files:
        out.update(load_file(path, backend="pread"))
    return out


def load_reference_fused(bench: Bench) -> dict[str, torch.Tensor]:
    """The reference, fused q/k/v and gate/up in memory (the default, vLLM-like)."""
    return dict(ReferenceLoader().load(str(bench.directory), bench.spec, LoadOptions()).state)


def load_reference_split(bench: Bench) -> dict[str, torch.Tensor]:
    """The reference, separate modules in memory (transformers-like)."""
    return dict(ReferenceLoader(fused_params=False).load(str(bench.directory), bench.spec,
                                                         LoadOptions()).state)


VARIANTS: dict[str, Callable[[Bench], dict[str, torch.Tensor]]] = {
    "safetensors": load_safetensors,
    "safetensors_pread": load_safetensors_pread,
    "reference_fused": load_reference_fused,
    "reference_split": load_reference_split,
}

_PEAK_SCRIPT = """
import json, sys
from benchmarks.test_load_throughput import VARIANTS, describe, touch

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)

variant, directory = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:  # another benchmark module's variants
    import importlib
    VARIANTS = importlib.import_module(sys.argv[3]).VARIANTS
bench = describe(directory)
load = VARIANTS[variant]
try:  # reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
baseline = status("VmRSS") if reset else status("VmHWM")
tensors = load(bench)
checksum = touch(tensors)
peak = status("VmHWM")
print(json.dumps({"baseline": baseline, "peak": peak, "delta": peak - baseline,
                  "hwm_reset": reset, "rss_anon_end": status("RssAnon"),
                  "rss_file_end": status("RssFile"), "checksum": checksum}))
"""


def measure_peak(variant: str, bench: Bench, module: str | None = None) -> dict[str, int]:
    """Peak memory of one variant (of this module's VARIANTS, or of `module`'s)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, variant, str(bench.directory)]
                          + ([module] if module else []),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- the benchmarks ------------------------------------------------------------------------
_SUMMARY: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request: pytest.FixtureRequest):
    """After the module: one table of every variant's figures, on the terminal."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not _SUMMARY:
        return
    base = _SUMMARY.get("safetensors")
    lines = ["", "load throughput (warm page cache, load + touch every byte; GB = 1e9 B; "
                 "vs st = GB/s over safetensors' GB/s; peak = VmHWM delta in a subprocess)",
             f"{'variant':<20}{'median ms':>10}{'min ms':>9}{'GB/s':>7}{'vs st':>7}"
             f"{'peak MB':>9}{'peak/ckpt':>10}{'anon MB':>9}{'file MB':>9}"]
    for name, row in _SUMMARY.items():
        ratio = row["gbps"] / base["gbps"] if base else float("nan")
        lines.append(
            f"{name:<20}{row['median_s'] * 1e3:>10.1f}{row['min_s'] * 1e3:>9.1f}"
            f"{row['gbps']:>7.2f}{ratio:>7.2f}{row['peak'] / 1e6:>9.1f}{row['peak_ratio']:>10.3f}"
            f"{row['anon'] / 1e6:>9.1f}{row['file'] / 1e6:>9.1f}")
    if capture is None:
        for line in lines:
            reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        for line in lines:
            reporter.write_line(line)


def _run(benchmark, bench: Bench, variant: str) -> dict[str, torch.Tensor]:
    """Time `variant` (load + touch), record figures, return the last round's tensors."""
    load = VARIANTS[variant]
    held: dict[str, dict[str, torch.Tensor]] = {}

    def setup():
        held.clear()  # free the previous round's tensors outside the timer
        return (), {}

    def target() -> int:
        tensors = load(bench)
        held["tensors"] = tensors  # freed in the next setup, not inside the timed call
        return touch(tensors)

    checksum = benchmark.pedantic(target, setup=setup, rounds=ROUNDS,
                                  warmup_rounds=WARMUP_ROUNDS, iterations=1)
    assert checksum == bench.checksum, f"{variant}: bytes differ from those written"
    tensors = held.pop("tensors")

    peak = measure_peak(variant, bench)
    assert peak["checksum"] == bench.checksum
    stats = benchmark.stats.stats
    row = {"median_s": stats.median, "min_s": stats.min, "mean_s": stats.mean,
           "gbps": bench.nbytes / stats.median / 1e9, "peak": peak["delta"],
           "peak_ratio": peak["delta"] / bench.nbytes, "anon": peak["rss_anon_end"],
           "file": peak["rss_file_end"]}
    _SUMMARY[variant] = row
    benchmark.extra_info.update({
        "variant": variant, "checkpoint_bytes": bench.nbytes,
        "checkpoint_file_bytes": bench.file_bytes, "shards": len(bench.shard_files),
        "spec": bench.spec.summary(),
        "throughput_GBps_median": row["gbps"],
        "throughput_GBps_best": bench.nbytes / stats.min / 1e9,
        "peak_rss_delta_bytes": peak["delta"], "peak_rss_baseline_bytes": peak["baseline"],
        "peak_hwm_reset": peak["hwm_reset"],
        "peak_over_checkpoint": row["peak_ratio"],
        "rss_anon_end_bytes": peak["rss_anon_end"], "rss_file_end_bytes": peak["rss_file_end"],
        "page_cache": "warm (written this session, warmup round first)",
    })
    if "safetensors" in _SUMMARY and variant != "safetensors":
        benchmark.extra_info["throughput_vs_safetensors"] = (
            row["gbps"] / _SUMMARY["safetensors"]["gbps"])
    return tensors


def _check_bitwise(bench: Bench, state: Mapping[str, torch.Tensor]) -> None:
    """The reference's state equals the safetensors tensors bit for bit (names, shapes,
    dtypes for all; bytes for BITWISE_KEYS; the whole-state checksum was checked already)."""
    raw = load_safetensors(bench)
    assert set(state) == set(raw)
    for key in raw:
        assert state[key].shape == raw[key].shape and state[key].dtype == raw[key].dtype, key
    for key in BITWISE_KEYS:
        got, want = state[key].reshape(-1).view(torch.uint8), raw[key].reshape(-1).view(torch.uint8)
        assert torch.equal(got, want), f"{key}: reference bytes differ from safetensors"


def test_safetensors(benchmark, bench_checkpoint):
    """(a) raw safetensors.torch.load_file of every shard (mmap backend), touching every byte."""
    _run(benchmark, bench_checkpoint, "safetensors")


def test_reference_fused(benchmark, bench_checkpoint):
    """(b) ReferenceLoader().load(...) (fused q/k/v, gate/up in memory), touching every byte."""
    state = _run(benchmark, bench_checkpoint, "reference_fused")
    _check_bitwise(bench_checkpoint, state)


def test_reference_split(benchmark, bench_checkpoint):
    """(c) ReferenceLoader(fused_params=False).load(...), touching every byte."""
    state = _run(benchmark, bench_checkpoint, "reference_split")
    _check_bitwise(bench_checkpoint, state)


def test_safetensors_pread(benchmark, bench_checkpoint):
    """(d, supplementary) safetensors with backend="pread": copies into fresh buffers like the
    reference, so it separates "mmap vs copy" from anything the reference adds."""
    _run(benchmark, bench_checkpoint, "safetensors_pread")
