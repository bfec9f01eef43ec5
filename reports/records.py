"""Reading the suite's records (schema 1): run metadata lines and divergence lines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["SUPPORTED_SCHEMAS", "Records", "read_records"]

SUPPORTED_SCHEMAS = {1}


@dataclass
class Records:
    runs: list[dict[str, Any]] = field(default_factory=list)
    divergences: list[dict[str, Any]] = field(default_factory=list)


def _files(paths: Iterable[Path]) -> list[Path]:
    files = []
    for path in paths:
        files += sorted(path.glob("records-*.jsonl")) if path.is_dir() else [path]
    return files


def read_records(paths: Iterable[str | Path]) -> Records:
    """Every record in the given files or result directories; a line that is not a record of
    a known schema is an error naming the file and line (a truncated last line, from a run
    that was killed mid-write, is skipped)."""
    records = Records()
    for path in _files(Path(p) for p in paths):
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
            if record.get("schema") not in SUPPORTED_SCHEMAS:
                raise ValueError(f"{path}:{number}: record schema {record.get('schema')!r} is "
                                 f"not one of {sorted(SUPPORTED_SCHEMAS)}")
            (records.runs if record.get("type") == "run" else records.divergences).append(record)
    return records
