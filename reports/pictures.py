"""The report's pictures, as geometry for the templates to draw in SVG: where a tensor is
wrong (its mismatch map; the maps of one fused parameter's slots stacked in slot order, with
the slot boundaries and the records' marks, e.g. TP-rank boundaries, drawn in) and how far
(the ULP histogram, so a 1-ULP rounding difference looks unlike poison or garbage).

Everything here is numbers and short labels; the template escapes the labels. A map's cells
are drawn as one SVG path per shade (runs of equal shade along a row merged), which keeps a
32 x 32 map to a few hundred bytes for the shapes bugs make (a block, a band, a slot)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .schema import Divergence

__all__ = ["MAP_WIDTH", "SHADES", "shade", "map_picture", "histogram_picture"]

MAP_WIDTH = 200          # px of the map itself; labels go to its right
LABEL_WIDTH = 110        # px for slot names and mark labels
MAX_HEIGHT = 200         # px of a whole picture (one map or a stack)
MIN_PANEL = 14           # px: the thinnest slot still shows
TOP_GUTTER = 12          # px above the map for column-mark labels
# A fraction differing in (0, .25], (.25, .5], (.5, .75], (.75, 1]: any difference shows.
SHADES = (0.25, 0.5, 0.75, 1.0)


def shade(fraction: float) -> int:
    """0 for an equal cell, else 1..4 (the quarter the fraction falls in)."""
    if not fraction or fraction <= 0 or math.isnan(fraction):
        return 0
    return next(i for i, top in enumerate(SHADES, 1) if fraction <= top or i == len(SHADES))


def _paths(cells: list[list[float]] | None) -> list[tuple[int, str]]:
    """[(shade, path in cell units)]: each row's runs of one shade as a rectangle."""
    by_shade: dict[int, list[str]] = {}
    for r, row in enumerate(cells or []):
        c = 0
        while c < len(row):
            level = shade(row[c])
            start = c
            while c < len(row) and shade(row[c]) == level:
                c += 1
            if level:
                by_shade.setdefault(level, []).append(f"M{start} {r}h{c - start}v1h-{c - start}z")
    return sorted((level, "".join(parts)) for level, parts in by_shade.items())


def _grid(cells: list[list[float]] | None) -> tuple[int, int]:
    rows = len(cells or [])
    return rows, max((len(r) for r in cells or []), default=0)


def _rows_of(d: Divergence) -> int:
    if d.slot is not None and d.slot.rows:
        return max(1, d.slot.rows[1] - d.slot.rows[0])
    if d.map is not None and d.map.shape:
        return max(1, int(d.map.shape[0]))
    return 1


def _panels(stack: list[Divergence]) -> list[dict[str, Any]]:
    """The stack's panels in slot order. Slots that did not diverge, between or before the
    ones that did, are 'equal' panels where the diverging slots' rows say where they are."""
    panels: list[dict[str, Any]] = []
    cursor, next_index = 0, 0   # the fused rows and the slot index drawn so far
    for d in sorted(stack, key=lambda d: d.slot.index if d.slot else 0):
        rows = d.slot.rows if d.slot is not None and d.slot.rows else None
        if d.slot is not None and d.slot.index > next_index:
            last = d.slot.index - 1
            known = rows and cursor is not None and rows[0] > cursor
            # where the record does not say the slots' rows, the equal ones are drawn at a
            # fixed height: their place in the order is known, their size is not
            panels.append({"divergence": None, "index": next_index,
                           "start": cursor if known else None,
                           "stop": rows[0] if known else None,
                           "rows": rows[0] - cursor if known else None, "sub": "equal",
                           "label": f"slot {next_index}" + (f"-{last}" if last > next_index
                                                             else "")})
        panels.append({"divergence": d, "index": d.slot.index if d.slot else 0,
                       "start": rows[0] if rows else None, "stop": rows[1] if rows else None,
                       "rows": _rows_of(d), "sub": d.finding.replace("_", " "),
                       "label": f"{d.slot.index} {d.slot.name}" if d.slot else ""})
        cursor = rows[1] if rows else None
        next_index = (d.slot.index + 1) if d.slot else next_index
    return panels


def _height(panels: list[dict[str, Any]], first: Divergence) -> float:
    """The picture's height: the aspect of the tensor (rows against columns), kept between a
    strip and MAX_HEIGHT, so a square matrix looks square and an embedding looks tall."""
    rows = sum(p["rows"] or 0 for p in panels)
    cols = int(first.map.shape[1]) if first.map is not None and len(first.map.shape) > 1 else rows
    wanted = MAP_WIDTH * rows / max(1, cols)
    return max(MIN_PANEL * len(panels), min(MAX_HEIGHT, max(28.0, wanted)))


def map_picture(stack: Iterable[Divergence]) -> dict[str, Any] | None:
    """One picture for `stack`: a divergence, or the divergences of one fused parameter.
    None when none of them has a map."""
    stack = [d for d in stack if d.map is not None and d.map.cells]
    if not stack:
        return None
    panels = _panels(stack)
    first = stack[0]
    has_cols = any(m.at for d in stack for m in d.map.col_marks)
    top = TOP_GUTTER if has_cols else 0
    height = _height(panels, first)
    total = sum(p["rows"] or 0 for p in panels)
    spare = height - MIN_PANEL * len(panels)
    y = float(top)
    lines: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []
    for number, panel in enumerate(panels):
        h = MIN_PANEL + (spare * panel["rows"] / total if panel["rows"] else 0)
        d = panel["divergence"]
        view = {"x": 0, "y": round(y, 2), "w": MAP_WIDTH, "h": round(h, 2),
                "slot": panel["index"], "equal": d is None, "mismatch": [], "poison": [],
                "grid": "0 0 1 1", "rows": (f"{panel['start']}:{panel['stop']}"
                                            if panel["start"] is not None else "")}
        if d is not None:
            grid_rows, grid_cols = _grid(d.map.cells)
            view["grid"] = f"0 0 {grid_cols} {grid_rows}"
            view["mismatch"] = _paths(d.map.cells)
            view["poison"] = _paths(d.map.poison)
            rows_here = d.map.shape[0] if d.map.shape else 1
            for mark in d.map.row_marks:
                at = y + h * mark.at / max(1, rows_here)
                lines.append({"x1": 0, "y1": round(at, 2), "x2": MAP_WIDTH, "y2": round(at, 2),
                              "cls": "mark"})
                labels.append({"x": MAP_WIDTH + 4, "y": round(at + 3.5, 2), "text": mark.label,
                               "cls": "mark"})
            cols_here = d.map.shape[1] if len(d.map.shape) > 1 else 1
            for mark in d.map.col_marks:
                at = MAP_WIDTH * mark.at / max(1, cols_here)
                lines.append({"x1": round(at, 2), "y1": round(y, 2), "x2": round(at, 2),
                              "y2": round(y + h, 2), "cls": "mark"})
                if number == 0:
                    labels.append({"x": round(at + 2, 2), "y": top - 3, "text": mark.label,
                                   "cls": "mark"})
        if len(panels) > 1:
            labels.append({"x": MAP_WIDTH + 4, "y": round(y + min(h / 2 + 3.5, 11), 2),
                           "text": panel["label"], "cls": "slot"})
            if h >= 24:
                labels.append({"x": MAP_WIDTH + 4, "y": round(y + min(h / 2 + 3.5, 11) + 11, 2),
                               "text": panel["sub"], "cls": "sub"})
        if number:
            lines.append({"x1": -4, "y1": round(y, 2), "x2": MAP_WIDTH + LABEL_WIDTH,
                          "y2": round(y, 2), "cls": "slotb"})
        views.append(view)
        y += h
    shape = first.map.shape
    fused = first.slot.fused if first.slot is not None and len(panels) > 1 else ""
    return {"w": MAP_WIDTH + (LABEL_WIDTH if any(t["x"] >= MAP_WIDTH for t in labels) else 0),
            "h": round(y + 1, 2), "map_w": MAP_WIDTH,
            "top": top, "panels": views, "lines": lines, "labels": labels, "fused": fused,
            "shape": " x ".join(str(s) for s in shape) if shape else "",
            "poisoned": any(p["poison"] for p in views)}


# The ULP bins the suite writes, and how each reads: 1 ULP is rounding; a few is arithmetic
# done differently; many, a sign flip or NaN / inf is another value altogether.
_BIN_CLASS = {"1": "u-round", "2-3": "u-near", "4-15": "u-near", "16-255": "u-far",
              "256+": "u-far", "sign": "u-far", "nan/inf": "u-nan"}
BAR_W, BAR_GAP, BAR_H = 30, 4, 40


def histogram_picture(bins: list[list[Any]] | None) -> dict[str, Any] | None:
    """Bars of the ULP histogram, log-scaled (a few garbage elements among thousands of
    rounding ones still show), each labelled with its bin and count."""
    items = [(str(b[0]), int(b[1])) for b in bins or []
             if isinstance(b, (list, tuple)) and len(b) == 2 and isinstance(b[1], (int, float))]
    if not items or not any(count for _, count in items):
        return None
    top = math.log1p(max(count for _, count in items))
    bars = []
    for i, (label, count) in enumerate(items):
        h = 0.0 if not count else 3 + (BAR_H - 3) * math.log1p(count) / top
        x = i * (BAR_W + BAR_GAP)
        bars.append({"x": x, "y": round(12 + BAR_H - h, 2), "w": BAR_W, "h": round(h, 2),
                     "label": label, "count": count, "cls": _BIN_CLASS.get(label, "u-far"),
                     "cx": x + BAR_W / 2})
    return {"w": len(items) * (BAR_W + BAR_GAP), "h": 12 + BAR_H + 12, "bars": bars,
            "base": 12 + BAR_H}
