"""Differential mode end to end on a generated ~1 GiB sharded bfloat16 llama checkpoint and
on its hub-cache-layout copy, against the reference (`reference-split`: a candidate that
keeps separate modules) and the transformers adapter.

Run with ``python -m pytest benchmarks/test_differential_speed.py -p no:cacheprovider -s``
(``LOADCHECK_DIFF_GIB`` picks the size). The goal (issue 18): end-to-end time <= 1.5 x
(the candidate's own load + touch, and raw safetensors' load + touch, of the same
checkpoint), and peak RSS above the candidate's loaded model <= 1.2 x the largest layer.

The differential run is a fresh `python -m conformance.differential` process; its time is
the one it prints (after imports and config parsing: from the candidate's load to the last
comparison), and its peak the VmHWM it prints. The two baselines are timed in this
process (median of 3 after a warm-up), from the same warm page cache. Nothing asserts on
time; every run must end EQUAL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generators.hostile import hub_cache_layout
from .test_load_growth import (VARIANTS, load_safetensors, spec_for, touch,
                               write_growth_checkpoint)
from .test_load_throughput import ROOT, Bench

pytestmark = pytest.mark.benchmark

GIB = float(os.environ.get("LOADCHECK_DIFF_GIB", "1"))
_CANDIDATE_VARIANT = {"reference-split": "reference_split", "transformers": "transformers"}
_FINAL = re.compile(r"^EQUAL: .*?([\d.]+) GB compared in ([\d.]+) s .*?"
                    r"peak RSS while comparing ([\d.]+) GB, "
                    r"([\d.]+) GB above the candidate's loaded model \(largest group ([\d.]+) GB\)")
_ROWS: list[str] = []


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Bench]:
    root = tmp_path_factory.mktemp("differential_speed")
    bench = write_growth_checkpoint(root / "plain", spec_for(GIB))
    snapshot = hub_cache_layout(bench.directory, root / "hub")
    return {"sharded": bench, "hub-cache": Bench(snapshot, bench.spec, bench.shard_files,
                                                 bench.nbytes, bench.file_bytes, bench.checksum)}


def _median_time(load, bench: Bench, rounds: int = 3) -> float:
    times = []
    for i in range(rounds + 1):
        start = time.perf_counter()
        tensors = load(bench)
        assert touch(tensors) == bench.checksum
        del tensors
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("layout", ["sharded", "hub-cache"])
@pytest.mark.parametrize("loader", ["reference-split", "transformers"])
def test_differential_end_to_end(loader, layout, layouts):
    if loader == "transformers":
        pytest.importorskip("transformers")
    bench = layouts[layout]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "conformance.differential", "--loader", loader,
                           "--checkpoint", str(bench.directory), "--records",
                           str(bench.directory.parent / f"records-{loader}")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    final = [m for line in done.stdout.splitlines() for m in [_FINAL.match(line)] if m]
    assert done.returncode == 0 and final, done.stdout[-3000:] + done.stderr[-3000:]
    gb, seconds, peak, above, largest = (float(x) for x in final[0].groups())
    candidate = _median_time(VARIANTS[_CANDIDATE_VARIANT[loader]], bench)
    raw = _median_time(load_safetensors, bench)
    ratio = seconds / (candidate + raw)
    _ROWS.append(f"{loader:<16}{layout:<10}{bench.nbytes / 1e9:>7.3f}{seconds:>9.2f}"
                 f"{candidate:>10.2f}{raw:>8.2f}{ratio:>8.2f}{gb / seconds:>7.2f}{peak:>8.2f}"
                 f"{above:>8.3f}{largest:>9.3f}{above / largest:>8.2f}")


def test_zz_print_table():
    lines = ["", f"differential mode, ~{GIB} GiB bf16 llama (times in s; ratio = diff / "
                 "(candidate + safetensors), goal <= 1.5; above/layer goal <= 1.2)",
             f"{'loader':<16}{'layout':<10}{'GB':>7}{'diff s':>9}{'cand s':>10}{'st s':>8}"
             f"{'ratio':>8}{'GB/s':>7}{'peak GB':>8}{'above':>8}{'layer GB':>9}{'a/layer':>8}",
             *_ROWS]
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("LOADCHECK_DIFF_TABLE")
    if out:
        Path(out).write_text(text + "\n")
