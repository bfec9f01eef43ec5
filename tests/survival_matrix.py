"""The survival matrix: the full `pr` suite against every misbehaving candidate kind of
tests/misbehaving.py (and the reference, whose claimed bytes/reload/fp8_quantize calls are
issue 15's "claims what --isolate cannot offer" kinds), isolated and in process, each run
bounded; one row per run: did it finish, in what time, did every collected test report,
and does every failed test have a record.

    nice -n 10 python -m tests.survival_matrix                # every kind, both modes
    python -m tests.survival_matrix --kinds hangs,segfaults --modes isolate
    python -m tests.survival_matrix --table-only              # re-render from saved rows

Rows are saved as JSON under --results (one file per kind and mode, so a partial re-run
replaces only its rows); the table is written between the markers of --doc.

Kinds that would harm a shared machine in process are not run in process (IN_PROCESS_UNSAFE:
no memory limit or process containment exists there), and in process core dumps are off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("isolate", "in-process")
START, END = "<!-- survival-matrix:start -->", "<!-- survival-matrix:end -->"

# kind -> why it is not run in process here (each needs --isolate: see docs/survival.md)
IN_PROCESS_UNSAFE = {
    "allocates": "2 GiB per call with no memory limit in process",
    "spawns_children": "leaves a process per call (thousands in a full run)",
    "escapes_its_group": "leaves a process per call, outside any group",
}


def kinds() -> list[str]:
    """Every misbehaving loader of tests/misbehaving.py, then the reference."""
    import tests.misbehaving as misbehaving
    from reference.loading import ReferenceLoader
    names = [name for name, value in vars(misbehaving).items()
             if isinstance(value, ReferenceLoader) and not name.startswith("_")]
    return names + ["reference"]


@dataclass
class Row:
    kind: str
    mode: str
    finished: bool = False
    seconds: float = 0.0
    returncode: int | None = None
    collected: int = 0
    reported: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    records: int = 0          # final divergence and crash records
    severities: dict[str, int] = field(default_factory=dict)
    state: str = "not run"    # reports.summary.run_state, or why it did not run
    unrecorded: list[str] = field(default_factory=list)  # failed tests without a record
    leftover_processes: int = 0
    note: str = ""

    @property
    def every_failure_recorded(self) -> bool:
        return self.finished and not self.unrecorded

    @property
    def survived(self) -> bool:
        return (self.finished and self.state not in ("incomplete", "not run")
                and self.every_failure_recorded and self.collected == self.reported)


def _limits() -> None:
    """In the suite's process group: no core files (a segfaulting candidate, in process)."""
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _leftovers(before: set[int]) -> int:
    """Kill the helper processes the run left (in process, by design: it reports them)."""
    left = set(_leftover_pids()) - before
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def run_one(kind: str, mode: str, results: Path, selection: list[str], timeout: float,
            max_hung: int, wall_limit: float, workers: str) -> Row:
    row = Row(kind, mode)
    if mode == "in-process" and kind in IN_PROCESS_UNSAFE:
        row.state, row.note = "not run", IN_PROCESS_UNSAFE[kind]
        return row
    records = results / f"{kind}-{mode}"
    for old in records.glob("records-*.jsonl") if records.exists() else ():
        old.unlink()
    loader = "reference" if kind == "reference" else f"tests.misbehaving:{kind}"
    command = [sys.executable, "-m", "pytest", *selection, "--loader", loader, "-p",
               "no:cacheprovider", "-p", "no:randomly", "-q", "--hypothesis-profile=pr",
               "--records", str(records), f"--candidate-timeout={timeout:g}",
               f"--max-hung-tests={max_hung}", "-n", workers, "--dist", "worksteal"]
    if mode == "isolate":
        command.append("--isolate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    env.pop("PYTEST_XDIST_WORKER", None)
    before = set(_leftover_pids())
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_limits)
    try:
        output, _ = proc.communicate(timeout=wall_limit)
        row.finished, row.returncode = True, proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        row.note = f"killed after {wall_limit:g} s"
    row.seconds = round(time.monotonic() - started, 1)
    row.leftover_processes = _leftovers(before)
    (results / f"{kind}-{mode}.log").write_text(output)
    _judge(row, records, output)
    return row


def _leftover_pids() -> list[int]:
    from tests.misbehaving import GRANDCHILD
    found = subprocess.run(["pgrep", "-f", "^" + " ".join(GRANDCHILD) + "$"],
                           capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def _judge(row: Row, records: Path, output: str) -> None:
    """Fill the row from the run's records, and check them against pytest's own outcomes."""
    from reports.records import read_runs
    from reports.summary import outcome_counts, run_state
    runs = read_runs([records]) if records.exists() else []
    if len(runs) != 1:
        row.state = f"{len(runs)} runs in the records"
        return
    run = runs[0]
    counts = outcome_counts(run)
    row.collected, row.reported = len(run.collected or []), len({o.get("test") for o in
                                                                 run.outcomes})
    row.passed, row.failed, row.skipped = (counts.get(k, 0) for k in ("passed", "failed",
                                                                      "skipped"))
    row.state = run_state(run)
    recorded = {str(r.get("test")) for r in run.divergences}
    row.records = len(run.divergences)
    for record in run.divergences:
        severity = str(record.get("severity"))
        row.severities[severity] = row.severities.get(severity, 0) + 1
    # pytest's own word on what failed (the terminal summary), not only the outcome lines
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M))
    failed |= {str(o["test"]) for o in run.outcomes if o.get("outcome") == "failed"}
    row.unrecorded = sorted(t for t in failed if t not in recorded)


def table(rows: list[Row]) -> str:
    lines = ["| kind | mode | finished | wall s | collected / reported | passed / failed / "
             "skipped | records (severities) | state | every failure recorded | survived |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.state == "not run":
            lines.append(f"| {row.kind} | {row.mode} | not run: {row.note} | | | | | | | |")
            continue
        severities = ", ".join(f"{k} {v}" for k, v in sorted(row.severities.items()))
        recorded = "yes" if row.every_failure_recorded else (
            f"no: {', '.join(row.unrecorded[:3])}" if row.unrecorded else "no")
        note = f" ({row.note})" if row.note else ""
        left = f"; {row.leftover_processes} processes left" if row.leftover_processes else ""
        lines.append(
            f"| {row.kind} | {row.mode} | {'y' if row.finished else 'n'}{note} | {row.seconds:g} "
            f"| {row.collected} / {row.reported} | {row.passed} / {row.failed} / {row.skipped} "
            f"| {row.records}{f' ({severities})' if severities else ''} | {row.state}{left} "
            f"| {recorded} | {'y' if row.survived else 'n'} |")
    return "\n".join(lines)


def load_rows(results: Path, names: list[str]) -> list[Row]:
    rows = []
    for kind in names:
        for mode in MODES:
            path = results / f"{kind}-{mode}.json"
            rows.append(Row(**json.loads(path.read_text())) if path.exists() else
                        Row(kind, mode, note="not measured yet"))
    return rows


def write_table(doc: Path, text: str) -> None:
    """The table between the doc's markers (the doc's prose is kept)."""
    current = doc.read_text() if doc.exists() else f"{START}\n{END}\n"
    if START not in current or END not in current:
        raise SystemExit(f"{doc} has no {START} ... {END} markers for the table")
    head, rest = current.split(START, 1)
    doc.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", help="comma-separated kinds (default: all)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "survival")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "survival.md")
    parser.add_argument("--candidate-timeout", type=float, default=5.0)
    parser.add_argument("--max-hung-tests", type=int, default=2)
    parser.add_argument("--wall-limit", type=float, default=1800.0,
                        help="seconds before a run is killed (and counted as not finished)")
    parser.add_argument("-n", dest="workers", default="2")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("selection", nargs="*", default=["conformance"])
    args = parser.parse_args(argv)
    names = args.kinds.split(",") if args.kinds else kinds()
    unknown = sorted(set(names) - set(kinds()))
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(kinds())}")
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for kind in names:
            for mode in args.modes.split(","):
                row = run_one(kind, mode, args.results, args.selection, args.candidate_timeout,
                              args.max_hung_tests, args.wall_limit, args.workers)
                (args.results / f"{kind}-{mode}.json").write_text(json.dumps(asdict(row)))
                print(table([row]).splitlines()[-1], flush=True)
    rows = load_rows(args.results, kinds())
    text = table(rows)
    if args.doc:
        write_table(args.doc, text)
    print(text)
    return 0 if all(r.survived or r.state == "not run" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
