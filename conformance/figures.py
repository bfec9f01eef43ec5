"""Figures a property measures on the way (not divergences): how many FP8 codes the GPU
computed that differ from the CPU reference, how close `_scaled_mm` came to its tolerance.
They are written beside the run's records, under `<records>/figures/`, one JSON-lines file
per kind and process, flushed per line like the records. `reports/` never reads them;
`./run gpu-check` sums them into its summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FIGURES_DIR", "write_figure", "read_figures"]

FIGURES_DIR = "figures"


def write_figure(records: Path, kind: str, values: dict[str, Any]) -> None:
    """Append one measurement of `kind` for this process (xdist workers never share a file)."""
    directory = Path(records) / FIGURES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(directory / f"{kind}-{worker}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(values, sort_keys=True, default=str) + "\n")
        f.flush()


def read_figures(records: Path, kind: str) -> list[dict[str, Any]]:
    """Every measurement of `kind` under `records` (a line cut by a killed run is skipped)."""
    out = []
    for path in sorted((Path(records) / FIGURES_DIR).glob(f"{kind}-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out
