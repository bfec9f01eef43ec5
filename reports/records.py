"""Reading the suite's records (schema 1): run metadata lines, divergence lines, known
divergences (matched by a baseline), per-test outcomes, the baseline verdict and the end line.

`read_records` returns every record, flat. `read_runs` groups them by run: a record belongs
to the run whose metadata line last preceded it in the same file (each process, the xdist
controller and every worker, writes its own file, starting with its run line), and the files
of one results directory whose run lines agree (time aside; the run id included) are one run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["SUPPORTED_SCHEMAS", "RUN_IDENTITY", "Records", "Run", "read_records", "read_runs", "final_divergences"]

from .schema import SUPPORTED_SCHEMAS, SchemaError, read_line

# The run-line fields that say which run it is; `time` differs between the xdist controller
# and its workers, so it is not one of them.
RUN_IDENTITY = ("run_id", "loader", "loader_version", "device", "profile", "seed", "torch",
                "hypothesis", "python", "revision")


@dataclass
class Records:
    runs: list[dict[str, Any]] = field(default_factory=list)
    divergences: list[dict[str, Any]] = field(default_factory=list)
    # Per-test outcome lines ({"type": "outcome", "test", "outcome"}), when the suite writes them.
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)     # matched by the baseline
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # the baseline's account


@dataclass
class Run:
    """One run of the suite: its metadata (the earliest time among its processes), where
    its records came from, and what it recorded."""
    meta: dict[str, Any]
    directory: str
    files: list[str] = field(default_factory=list)
    divergences: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] | None = None   # the baseline's account, when run with one
    end: dict[str, Any] | None = None       # the controller's last line: the run finished
    # feature -> drawn specs it was left out of (outside the loader's model support)
    not_generated: dict[str, int] = field(default_factory=dict)
    collected: list[str] | None = None      # the tests the run meant to run (its start)

    @property
    def unreported(self) -> list[str]:
        """Collected tests without an outcome line: the run (or a worker) died first."""
        reported = {str(o.get("test")) for o in self.outcomes}
        return [t for t in self.collected or [] if t not in reported]

    @property
    def complete(self) -> bool | None:
        """Whether the run finished and every collected test reported; None for records
        older than end lines (no run id)."""
        if self.end is None:
            return False if self.meta.get("run_id") else None
        return not self.unreported

    @property
    def loader(self) -> str:
        return str(self.meta.get("loader") or "unknown")

    @property
    def cell(self) -> tuple[str, str]:
        """(device, torch version): the matrix column this run belongs to."""
        return (str(self.meta.get("device") or "unknown"), str(self.meta.get("torch") or "unknown"))


def _files(paths: Iterable[Path], descend: bool = False) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("records-*.jsonl"))
            if not found and descend:  # a folder of result directories (nightly artifacts)
                found = sorted(path.rglob("records-*.jsonl"))
            files += found
        else:
            files.append(path)
    return files


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one file; a line that is not a record of a known schema is an error
    naming the file and line (a truncated last line, from a run killed mid-write, is skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise ValueError(f"{path}:{number}: not a JSON record") from None
        if "\\ud" in line.lower():  # an escaped surrogate: a lone one cannot be written out
            record = _without_lone_surrogates(record)
        try:
            yield read_line(record, f"{path}:{number}")
        except SchemaError as exc:
            raise ValueError(str(exc)) from None


def _without_lone_surrogates(value: Any) -> Any:
    """A record whose strings hold a lone surrogate (a candidate's tensor name, say), with
    each one written as its escape (\\udc80): valid JSON, but no UTF-8 file, HTML page or
    terminal can hold the character itself."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v)
                for k, v in value.items()}
    return value


def read_records(paths: Iterable[str | Path]) -> Records:
    """Every record in the given files or result directories, in file order."""
    records = Records()
    for path in _files(Path(p) for p in paths):
        for record in _lines(path):
            kind = record.get("type")
            if kind == "run":
                records.runs.append(record)
            elif kind == "outcome":
                records.outcomes.append(record)
            elif kind == "known":
                records.known.append(record)
            elif kind == "baseline":
                records.verdicts.append(record)
            elif kind not in ("end", "collected", "support"):
                records.divergences.append(record)
    return records


def read_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The records of the given files or result directories (or folders of result
    directories), grouped into runs, in the order they were first seen."""
    runs: dict[tuple, Run] = {}
    seen: set[Path] = set()
    for path in _files((Path(p) for p in paths), descend=True):
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        directory = str(path.parent)
        current: Run | None = None
        for record in _lines(path):
            kind = record.get("type")
            if kind == "run":
                current = _run_for(runs, directory, record)
                if str(path) not in current.files:
                    current.files.append(str(path))
                time = record.get("time")
                if time and (not current.meta.get("time") or str(time) < str(current.meta["time"])):
                    current.meta["time"] = time
                continue
            run = current
            if run is None:  # records without a run line before them (a foreign or cut file)
                run = _run_for(runs, directory, {"loader": record.get("loader")})
                if str(path) not in run.files:
                    run.files.append(str(path))
            if kind == "outcome":
                run.outcomes.append(record)
            elif kind == "known":
                run.known.append(record)
            elif kind == "baseline":
                run.verdict = record
            elif kind == "end":
                run.end = record
            elif kind == "collected":
                run.collected = [str(t) for t in record.get("tests") or []]
            elif kind == "support":
                for feature, count in (record.get("not_generated") or {}).items():
                    run.not_generated[feature] = run.not_generated.get(feature, 0) + int(count)
            else:
                run.divergences.append(record)
    for run in runs.values():
        run.divergences = final_divergences(run.divergences)
    return list(runs.values())


def final_divergences(divergences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A failure is recorded when first found and again once shrunk: keep the shrunk one,
    and the first one only where the run was killed before shrinking finished."""
    shrunk = {d["test"] for d in divergences if d.get("stage") == "final"}
    return [d for d in divergences if d.get("stage") != "first" or d["test"] not in shrunk]


def _run_for(runs: dict[tuple, Run], directory: str, meta: dict[str, Any]) -> Run:
    key = (directory,) + tuple(json.dumps(meta.get(k), sort_keys=True, default=str)
                               for k in RUN_IDENTITY)
    if key not in runs:
        runs[key] = Run(meta={k: v for k, v in meta.items() if k != "schema"}, directory=directory)
    return runs[key]
