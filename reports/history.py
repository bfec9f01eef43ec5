"""Night over night: which divergences are new, which are still failing (since when), and
which are fixed.

A divergence is the same one on two nights when its loader, its matrix cell (device, torch)
and its signature (test and what diverged, reports.identity) agree. Every report writes a
history file beside itself (`<report>.history.json`): each divergence it showed, with the
date it was first seen, so `--previous` carries "since" across any number of nights; the
previous night's records work too (then "since" starts at that night)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .identity import record_signature
from .records import Run, read_runs

__all__ = ["Key", "HISTORY_SUFFIX", "history_path", "previous_divergences", "current_keys",
           "write_history"]

Key = tuple[str, str, str]  # (loader, cell, signature)
HISTORY_SUFFIX = ".history.json"


def history_path(report: str | Path) -> Path:
    report = Path(report)
    return report.with_name(report.stem + HISTORY_SUFFIX)


def _cell(run: Run) -> str:
    device, torch = run.cell
    return f"{device} · torch {torch}"


def _day(run: Run) -> str:
    return str(run.meta.get("time") or "")[:10] or "?"


def current_keys(runs: Iterable[Run]) -> dict[Key, dict[str, Any]]:
    """Every divergence and known divergence of `runs` by key."""
    out: dict[Key, dict[str, Any]] = {}
    for run in runs:
        for record in list(run.divergences) + list(run.known):
            key = (run.loader, _cell(run), record_signature(record))
            out.setdefault(key, {"since": _day(run), "severity": record.get("severity"),
                                 "test": record.get("test"), "property": record.get("property"),
                                 "known": record.get("entry")})
    return out


def previous_divergences(path: str | Path) -> tuple[dict[Key, dict[str, Any]], set[tuple[str, str]]]:
    """(key -> what the previous night knew of it, including `since`; the (loader, cell)
    pairs the previous night ran) from a history file, a folder holding one, or records."""
    path = Path(path)
    found = [path] if path.is_file() and path.name.endswith(HISTORY_SUFFIX) else (
        sorted(path.glob("*" + HISTORY_SUFFIX)) if path.is_dir() else [])
    if found:
        data = json.loads(found[0].read_text(encoding="utf-8"))
        items = {(d["loader"], d["cell"], d["signature"]): d for d in data.get("divergences", [])}
        return items, {tuple(c) for c in data.get("cells", [])}
    runs = read_runs([path])
    if not runs:
        raise ValueError(f"{path}: neither a report history ({HISTORY_SUFFIX}) nor records")
    return current_keys(runs), {(r.loader, _cell(r)) for r in runs}


def write_history(report: str | Path, runs: list[Run],
                  previous: dict[Key, dict[str, Any]] | None) -> Path:
    items = []
    for key, info in sorted(current_keys(runs).items()):
        since = (previous or {}).get(key, {}).get("since") or info["since"]
        items.append({"loader": key[0], "cell": key[1], "signature": key[2], **info,
                      "since": since})
    out = history_path(report)
    out.write_text(json.dumps({"cells": sorted({(r.loader, _cell(r)) for r in runs}),
                               "divergences": items}, indent=1, default=str), encoding="utf-8")
    return out
