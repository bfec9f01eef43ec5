"""Run the conformance suite against mutants in fresh processes and read what it recorded.

`python -m tests.mutation` prints the kill table (every property module, every mutant):
which tests failed and how many examples the first failure took. The test suite uses
`run_suite` on each mutant's catching test only, to stay fast.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.suite_process import run_pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SuiteRun:
    returncode: int
    output: str
    failed: list[str]
    records: list[dict]

    def records_of(self, test: str) -> list[dict]:
        return [r for r in self.records if r.get("type") == "divergence"
                and r["test"].split("[")[0].endswith(test)]


def run_suite(loader: str, selection: str = "conformance", *extra: str,
              records: Path | None = None, pythonpath: Path | None = None) -> SuiteRun:
    """`pytest <selection> --loader <loader>` (pr profile) in its own process (a child of
    tests/suite_process.py's zygote: fresh state, torch already imported), on the
    device LOADCHECK_MUTANT_DEVICE names (`./run gpu-check` sets cuda), else the default;
    `pythonpath` is where an out-of-tree adapter lives."""
    records = records or Path(tempfile.mkdtemp(prefix="loadcheck-records-"))
    device = os.environ.get("LOADCHECK_MUTANT_DEVICE")
    if device:
        extra = (*extra, f"--device={device}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(p) for p in (ROOT, pythonpath) if p is not None)}
    env.pop("PYTEST_XDIST_WORKER", None)
    # pytest fits summary lines to COLUMNS: a fixed width keeps the output a test reads
    # the same on a wide CI terminal as here
    env["COLUMNS"] = "80"
    proc = run_pytest(
        [selection, "--loader", loader, "-p", "no:cacheprovider",
         "-p", "no:randomly", "-q", "--records", str(records), "--hypothesis-profile=pr", *extra],
        cwd=ROOT, env=env, timeout=900)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    lines = []
    for path in sorted(records.glob("records-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return SuiteRun(proc.returncode, proc.stdout + proc.stderr, failed, lines)


def main() -> None:
    from tests.mutants import MUTANTS
    print(f"{'mutant':38} {'caught by (examples to first failure)'}")
    killed = 0
    for name in MUTANTS:
        module = importlib.import_module(f"tests.mutants.{name}")
        run = run_suite(f"tests.mutants.{name}", "conformance", "-n", "2", *module.CATCH.options)
        caught = {r["test"].split("::")[-1]: r["examples_before_failure"]
                  for r in run.records if r.get("type") == "divergence"}
        killed += bool(caught)
        fastest = min(caught.values()) if caught else None
        expected = module.CATCH.test.split("::")[-1]
        print(f"{name:38} fastest {fastest}; "
              + ", ".join(f"{t} ({n})" for t, n in sorted(caught.items(), key=lambda kv: kv[1]))
              + ("" if expected in caught else f"  [EXPECTED {expected} MISSING]"))
    print(f"killed {killed} / {len(MUTANTS)}")


if __name__ == "__main__":
    main()
