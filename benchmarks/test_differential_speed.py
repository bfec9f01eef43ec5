"""Differential mode end to end on a generated ~1 GiB sharded bfloat16 llama checkpoint and
on its hub-cache-layout copy, against the reference (`reference-split`: a candidate that
keeps separate modules), the transformers adapter, and the vLLM adapter where vLLM imports
(its environment: `tox -e vllm`, or /work/venvs/vllm; reported as absent otherwise).

Run with ``python -m pytest benchmarks/test_differential_speed.py -p no:cacheprovider -s``
(``LOADCHECK_DIFF_GIB`` picks the size, ``LOADCHECK_DIFF_ROUNDS`` the rounds). The goal
(issue 18): end-to-end time <= 1.5 x (the candidate's own load + touch, and raw
safetensors' load + touch, of the same checkpoint), and peak RSS above the candidate's
loaded model <= 1.2 x the largest layer.

Each round runs, in turn (the order rotating between rounds, so that no one of them always
runs after the same neighbour on a shared machine): a fresh `python -m
conformance.differential` process, whose time is the one it prints (from the candidate's
load to the last comparison: no imports), and whose peak is the VmHWM it prints; the
candidate's own load + touch, through the same adapter call differential mode makes, in a
fresh process (as differential mode's own), without poison; with poison too where the
candidate claims it (differential mode asks for it by default, so an unwritten slot
shows); and raw safetensors' load + touch. All from the
same warm page cache; medians over the rounds. A candidate that claims poison is also run
with `--no-poison`. Nothing asserts on time; every run must end EQUAL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generators.hostile import hub_cache_layout
from .test_load_growth import load_safetensors, spec_for, touch, write_growth_checkpoint
from .test_load_throughput import ROOT, Bench

pytestmark = pytest.mark.benchmark

GIB = float(os.environ.get("LOADCHECK_DIFF_GIB", "1"))
ROUNDS = int(os.environ.get("LOADCHECK_DIFF_ROUNDS", "3"))
_FINAL = re.compile(r"^EQUAL: .*?([\d.]+) GB compared in ([\d.]+) s \(CPU ([\d.]+) s\) .*?"
                    r"peak RSS while comparing ([\d.]+) GB, "
                    r"([\d.]+) GB above the candidate's loaded model \(largest group ([\d.]+) GB\)")
_ROWS: list[str] = []
# (loader, differential mode's poison): None where the candidate does not claim poison
_CASES = [("reference-split", True), ("reference-split", False), ("transformers", None),
          ("vllm", True), ("vllm", False)]
_NEEDS = {"transformers": "transformers", "vllm": "vllm"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Bench]:
    root = tmp_path_factory.mktemp("differential_speed")
    bench = write_growth_checkpoint(root / "plain", spec_for(GIB))
    snapshot = hub_cache_layout(bench.directory, root / "hub")
    return {"sharded": bench, "hub-cache": Bench(snapshot, bench.spec, bench.shard_files,
                                                 bench.nbytes, bench.file_bytes, bench.checksum)}


def _differential(loader: str, bench: Bench, poison: bool) -> tuple[float, ...]:
    """One differential run in a fresh process: (GB, seconds, CPU seconds, peak GB, above
    GB, layer GB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "conformance.differential", "--loader", loader,
                           "--checkpoint", str(bench.directory), "--records",
                           str(bench.directory.parent / f"records-{loader}")]
                          + ([] if poison else ["--no-poison"]),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    final = [m for line in done.stdout.splitlines() for m in [_FINAL.match(line)] if m]
    assert done.returncode == 0 and final, done.stdout[-3000:] + done.stderr[-3000:]
    return tuple(float(x) for x in final[0].groups())


_CANDIDATE_SCRIPT = """
import json, sys, time
from pathlib import Path
from benchmarks.test_load_throughput import touch
from conformance.loaders import resolve
from reference.contract import LoadOptions
from reference.hf_config import spec_from_config
loader, directory, poison = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
candidate = resolve(loader)  # as differential mode does before its clock starts
spec = spec_from_config(json.loads((directory / "config.json").read_text())).spec
start, cpu = time.perf_counter(), time.process_time()
result = candidate.load(str(directory), spec, LoadOptions(poison=poison))
checksum = touch(result.state)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "checksum": checksum}))
"""


def _candidate(loader: str, bench: Bench, poison: bool):
    """The candidate's load + touch as differential mode calls it (the adapter's `load`), in
    a fresh process as differential mode runs it: a first load pays what a loader does
    once per process (transformers imports its model's code then), on both sides."""
    def load() -> float:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", _CANDIDATE_SCRIPT, loader,
                               str(bench.directory), "1" if poison else "0"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["checksum"] == bench.checksum, f"{loader}: bytes differ from those written"
        return answer["seconds"], answer["cpu"]
    return load


def _raw(bench: Bench):
    def load() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        assert touch(load_safetensors(bench)) == bench.checksum
        return time.perf_counter() - start, time.process_time() - cpu
    return load


def _median(values: list, at: int = 0) -> float:
    return sorted(v[at] for v in values)[len(values) // 2]


@pytest.mark.parametrize("layout", ["sharded", "hub-cache"])
@pytest.mark.parametrize("loader,poison", _CASES,
                         ids=[f"{n}-{'poison' if p else 'no-poison' if p is False else 'plain'}"
                              for n, p in _CASES])
def test_differential_end_to_end(loader, poison, layout, layouts):
    if importlib.util.find_spec(_NEEDS.get(loader, "torch")) is None:
        _ROWS.append(f"{loader:<16}{layout:<10}  not measured: {_NEEDS[loader]} is not "
                     f"importable in this environment")
        pytest.skip(f"{loader} is not importable here")
    bench = layouts[layout]
    steps = {"diff": lambda: _differential(loader, bench, bool(poison)),
             "cand": _candidate(loader, bench, poison=False), "raw": _raw(bench)}
    if poison:
        steps["cand_poison"] = _candidate(loader, bench, poison=True)
    for step in ("cand", "raw"):  # warm-up: imports, the page cache
        steps[step]()
    times: dict[str, list] = {step: [] for step in steps}
    order = list(steps)
    for round_ in range(ROUNDS):
        for step in order[round_ % len(order):] + order[:round_ % len(order)]:
            times[step].append(steps[step]())
    runs = sorted(times["diff"], key=lambda r: r[1])
    gb, seconds, _, peak, above, largest = runs[len(runs) // 2]
    cand, raw = _median(times["cand"]), _median(times["raw"])
    cand_poison = _median(times["cand_poison"]) if poison else None
    cpu = {step: _median(times[step], 2 if step == "diff" else 1) for step in times}
    label = loader + ("" if poison is None else " (poison)" if poison else " --no-poison")
    _ROWS.append(
        f"{label:<30}{layout:<10}{bench.nbytes / 1e9:>6.3f}{seconds:>8.2f}{cand:>8.2f}"
        + (f"{cand_poison:>8.2f}" if poison else f"{'-':>8}")
        + f"{raw:>7.2f}{seconds / (cand + raw):>7.2f}"
        + (f"{seconds / (cand_poison + raw):>8.2f}" if poison else f"{'-':>8}")
        + f"{gb / max(seconds, 1e-3):>6.2f}{peak:>7.2f}{above:>7.3f}{largest:>7.3f}"
        + f"{above / largest:>6.2f}"
        + f"{cpu['diff'] / (cpu['cand'] + cpu['raw']):>6.2f}"
        + (f"{cpu['diff'] / (cpu['cand_poison'] + cpu['raw']):>6.2f}" if poison else f"{'-':>6}")
        + f"  [diff s: {', '.join(f'{r[1]:.2f}' for r in times['diff'])}]")


def test_zz_print_table():
    load = os.getloadavg()
    lines = ["", f"differential mode, ~{GIB} GiB bf16 llama, {ROUNDS} interleaved rounds, "
                 f"medians (load average at the end {load[0]:.1f} / {load[1]:.1f} / "
                 f"{load[2]:.1f} on {os.cpu_count()} CPUs)",
             "times in s; cand: the candidate's own load + touch; cand+p: the same, poisoned; "
             "st: raw safetensors load + touch;",
             "ratio = diff / (cand + st), goal <= 1.5; ratio+p = diff / (cand+p + st); "
             "a/l = GB above the candidate's model / largest layer, goal <= 1.2; cpu, cpu+p: "
             "ratio and ratio+p by CPU time (medians)",
             f"{'candidate':<30}{'layout':<10}{'GB':>6}{'diff':>8}{'cand':>8}{'cand+p':>8}"
             f"{'st':>7}{'ratio':>7}{'ratio+p':>8}{'GB/s':>6}{'peak':>7}{'above':>7}"
             f"{'layer':>7}{'a/l':>6}{'cpu':>6}{'cpu+p':>6}",
             *_ROWS]
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("LOADCHECK_DIFF_TABLE")
    if out:
        Path(out).write_text(text + "\n")
