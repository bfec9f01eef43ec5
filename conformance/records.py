"""Divergence records: JSON lines, appended and flushed the moment a failure is final,
so a run that is killed keeps what it found. `reports/` reads these and nothing else.

Every run has its own id, and every process of a run its own file,
`records-<run id>-<worker>.jsonl`: runs never interleave in one file. A results directory
holds one run per cell (loader x device x torch): a new run of a cell replaces the earlier
run's files and repro checkpoints (`replace_cell`), so a report built afterwards never shows
a divergence that was fixed since."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from reports.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "RecordWriter", "new_run_id", "run_metadata", "replace_cell",
           "cell_of"]



def new_run_id() -> str:
    """Sortable by start time, unique across machines: 20261130T054500-1a2b3c."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class RecordWriter:
    """One file per process of a run (xdist workers never share a file)."""

    def __init__(self, directory: Path, worker: str, run_id: str):
        self.directory = Path(directory).absolute()
        self.run_id = run_id
        self.path = self.directory / f"records-{run_id}-{worker}.jsonl"

    @property
    def repro_directory(self) -> Path:
        return self.directory / "repro" / self.run_id

    def write(self, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"schema": SCHEMA_VERSION, "run_id": self.run_id, **record},
                          default=str, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_own(self) -> Iterator[dict[str, Any]]:
        """This run's records, from every process's file (the controller reads what its
        workers wrote)."""
        for path in sorted(self.directory.glob(f"records-{self.run_id}-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line of a killed worker
                if isinstance(record, dict):
                    yield record


def cell_of(meta: dict[str, Any]) -> tuple[str, str, str]:
    """The matrix cell a run belongs to: (loader, device, torch)."""
    return (str(meta.get("loader")), str(meta.get("device")), str(meta.get("torch")))


def _first_run_line(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if isinstance(record, dict) and record.get("type") == "run":
                    return record
    except (OSError, ValueError):
        return None
    return None


def replace_cell(directory: Path, meta: dict[str, Any], run_id: str) -> list[str]:
    """Remove the records (and repro checkpoints) of earlier runs of `meta`'s cell from
    `directory`; returns the run ids removed. Other cells' records stay: that is how runs
    of several loaders, devices or torch versions merge into one matrix."""
    directory = Path(directory)
    removed: set[str] = set()
    for path in sorted(directory.glob("records-*.jsonl")):
        first = _first_run_line(path)
        if first is None or cell_of(first) != cell_of(meta) or first.get("run_id") == run_id:
            continue
        old = str(first.get("run_id") or "unnamed")
        removed.add(old)
        path.unlink()
        if first.get("run_id"):
            shutil.rmtree(directory / "repro" / old, ignore_errors=True)
    return sorted(removed)


def run_metadata(*, loader: str, loader_version: str, device: str, profile: str,
                 seed: int | None, baseline: str | None = None,
                 records: Path | None = None) -> dict[str, Any]:
    import hypothesis
    import torch
    return {"type": "run", "loader": loader, "loader_version": loader_version,
            "device": device, "profile": profile, "seed": seed, "torch": torch.__version__,
            "hypothesis": hypothesis.__version__, "python": platform.python_version(),
            "revision": _git_revision(), "baseline": baseline,
            # where the run wrote: a report finds repro checkpoints wherever the directory went
            "records": str(records) if records is not None else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _git_revision() -> str | None:
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        ref = (git / "HEAD").read_text().strip()
        if ref.startswith("ref: "):
            for base in (git, git / ".." / ".."):  # a worktree's refs live in the main .git
                if (base / ref[5:]).is_file():
                    return (base / ref[5:]).read_text().strip()
            return None
        return ref
    except OSError:
        return None
