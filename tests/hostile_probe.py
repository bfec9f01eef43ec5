"""Load one checkpoint directory with the reference in a fresh process and measure the
refusal: its family and message, wall seconds, and peak memory above the process's
resident set just before the load (VmHWM reset through /proc/self/clear_refs, as in
benchmarks/test_load_throughput.py; not ru_maxrss, which a child inherits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reference.contract import LoadOptions, ModelSpec

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
from reference.contract import LoadError, LoadOptions, ModelSpec
from reference.loading import ReferenceLoader

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

spec = ModelSpec.from_dict(json.loads(sys.argv[2]))
options = LoadOptions(**json.loads(sys.argv[3]))
loader = ReferenceLoader()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
except OSError:
    base = status("VmHWM")
start = time.perf_counter()
try:
    loader.load(sys.argv[1], spec, options)
    out = {"family": None, "message": "loaded"}
except LoadError as exc:
    out = {"family": exc.family, "message": str(exc), "subject": exc.subject}
except BaseException as exc:
    out = {"family": "not a family error", "message": f"{type(exc).__name__}: {exc}"}
out["seconds"] = time.perf_counter() - start
out["peak_bytes"] = status("VmHWM") - base
print(json.dumps(out))
"""


def probe(directory: Path, spec: ModelSpec, options: LoadOptions | None = None,
          timeout: float = 120) -> dict:
    """{family, message, subject, seconds, peak_bytes}; a subprocess.TimeoutExpired when the
    reference blocks (the timeout guards the test run, it is no speed goal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(directory),
                           json.dumps(spec.to_dict()), json.dumps(vars(options or LoadOptions()))],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"the probe died ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
