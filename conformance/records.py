"""Divergence records: JSON lines, appended and flushed the moment a failure is final,
so a run that is killed keeps what it found. `reports/` reads these and nothing else."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "RecordWriter", "run_metadata"]

SCHEMA_VERSION = 1


class RecordWriter:
    """One file per process (xdist workers never share a file)."""

    def __init__(self, directory: Path, worker: str):
        self.directory = Path(directory)
        self.path = self.directory / f"records-{worker}.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"schema": SCHEMA_VERSION, **record}, default=str, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def run_metadata(*, loader: str, loader_version: str, device: str, profile: str,
                 seed: int | None) -> dict[str, Any]:
    import hypothesis
    import torch
    return {"type": "run", "loader": loader, "loader_version": loader_version,
            "device": device, "profile": profile, "seed": seed, "torch": torch.__version__,
            "hypothesis": hypothesis.__version__, "python": platform.python_version(),
            "revision": _git_revision(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _git_revision() -> str | None:
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return None
