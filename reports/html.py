"""The HTML report: one self-contained file (inline CSS, JS and SVG; nothing fetched) built
from the suite's records with jinja2 templates (autoescaped).

    build_report(["results/latest"], "report.html")

This module turns records into plain view data (dicts of strings and numbers); the
templates in `reports/templates/` lay it out. Contents: what is new (first screen), the runs
merged (their metadata), a matrix loader x (device, torch version), a summary property
family x loader, and a card per divergence group: the same divergence (loader and signature)
in several cells is one card with a badge per cell; divergences a baseline knows are cards of
their own, marked known. With a previous night (`previous=`), every group is new, still
failing since a date, or fixed."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from .history import Key, previous_divergences, write_history
from .identity import record_signature
from .records import Run, read_runs
from .summary import headline, incomplete_reason, outcome_counts, run_state, severity_rank

__all__ = ["build_report", "render_report", "report_context", "MAX_ITEMS_PER_CARD"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

# A card shows this many tensor-level divergences in full (a loader that gets every tensor
# wrong would otherwise make one card a page long), the next ones as rows of a compact table,
# and names the rest in one line.
MAX_ITEMS_PER_CARD = 4
MAX_ROWS_PER_CARD = 60
MAX_NAMES_LISTED = 24

# Fields that differ between replays of one failure without it being another divergence.
_VOLATILE = frozenset({"schema", "examples_before_failure", "repro_checkpoint",
                       "repro_command"})

_ROWS_OF = re.compile(r"\(rows \d+:\d+ of (\d+)\)")
_TENSOR_TAIL = re.compile(r"found .*\((torch\.\w+)\)(?:; (.+))?$")


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(enabled_extensions=("html", "j2"),
                                                   default_for_string=True, default=True),
                      trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    env.filters["num"] = fmt_number
    env.filters["g"] = lambda x: f"{x:.4g}"
    return env


def fmt_number(value: Any) -> str:
    """3 significant digits for floats, thousands separators for integers, NaN / inf kept."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.3g}"
    return str(value)


def _version_key(text: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+\-]", text))


def _family_key(name: str) -> tuple:
    match = re.match(r"P(\d+)\b", name)
    return (int(match.group(1)) if match else 10**6, name)


_severity_rank = severity_rank
# Cards and the "new" list sort by this first: what changed since the previous night leads.
STATUS_ORDER = ("new", "still", None, "known")


def _cell_key(cell: tuple[str, str]) -> str:
    return f"{cell[0]} · torch {cell[1]}"


def _run_view(index: int, run: Run, divergences: int, tests: int) -> dict[str, Any]:
    meta = run.meta
    revision = str(meta.get("revision") or "")
    seed = meta.get("seed")
    return {
        "id": f"r{index}", "loader": run.loader, "version": str(meta.get("loader_version") or "-"),
        "torch": str(meta.get("torch") or "-"), "device": str(meta.get("device") or "-"),
        "profile": str(meta.get("profile") or "-"),
        "seed": ("derandomized" if "seed" in meta else "-") if seed is None else str(seed),
        "revision": revision[:10] or "-", "revision_full": revision or "unknown",
        "time": str(meta.get("time") or "-"), "python": str(meta.get("python") or "-"),
        "hypothesis": str(meta.get("hypothesis") or "-"), "directory": run.directory,
        "divergences": divergences, "failing_tests": tests, "cell": _cell_key(run.cell),
        "state": run_state(run),
        "why_incomplete": incomplete_reason(run) if run.complete is False else "",
        "known": len({k.get("entry") for k in run.known}),
        "fixed": sorted((run.verdict or {}).get("fixed") or []),
        "baseline": str(meta.get("baseline") or ""),
        "written_at": str(meta.get("records") or ""),
    }


def _row_count(detail: dict[str, Any], message: str) -> int | None:
    """The tensor's first dimension: from `shape` when the record has it, else from the
    message's "(rows a:b of N)"."""
    shape = detail.get("shape")
    if isinstance(shape, list) and shape and isinstance(shape[0], int):
        return shape[0]
    match = _ROWS_OF.search(message)
    return int(match.group(1)) if match else None


def _bar(detail: dict[str, Any], message: str) -> dict[str, Any] | None:
    """Geometry for the mini-visual: the mismatched (and poisoned) share of the elements,
    and the span of differing rows among the tensor's rows."""
    mismatched, numel = detail.get("mismatched"), detail.get("numel")
    if not isinstance(mismatched, int) or not isinstance(numel, int) or numel <= 0:
        return None
    width = 200.0
    poisoned = detail.get("poisoned") if isinstance(detail.get("poisoned"), int) else 0
    bar: dict[str, Any] = {
        "w": width, "mis": max(1.0, width * mismatched / numel) if mismatched else 0.0,
        "poison": max(1.0, width * poisoned / numel) if poisoned else 0.0,
        "pct": 100.0 * mismatched / numel, "rows": None,
    }
    rows, total = detail.get("rows"), _row_count(detail, message)
    if isinstance(rows, list) and len(rows) == 2 and total:
        start, stop = rows
        bar["rows"] = {"x": width * start / total, "w": max(1.5, width * (stop - start) / total),
                       "start": start, "stop": stop, "total": total}
    return bar


def _item_view(d: dict[str, Any]) -> dict[str, Any]:
    detail = d.get("detail") or {}
    if not isinstance(detail, dict):
        detail = {"value": detail}
    message = str(d.get("message") or "")
    kind = str(d.get("kind") or "?")
    item: dict[str, Any] = {
        "kind": kind, "subject": str(d.get("subject") or ""), "message": message,
        "severity": str(d.get("severity") or "divergence"), "stats": [], "bar": None,
        "expected": None, "found": None, "first_index": None, "lacking": [], "extra": [],
        "lacking_more": 0, "extra_more": 0, "dtype": None, "where": None,
    }
    if "mismatched" in detail:
        numel = detail.get("numel")
        stats = [("mismatched", f"{fmt_number(detail['mismatched'])} / {fmt_number(numel)}",
                  "c-mis")]
        rows = detail.get("rows")
        if isinstance(rows, list) and len(rows) == 2:
            total = _row_count(detail, message)
            stats.append(("rows", f"{rows[0]}:{rows[1]}" + (f" of {total}" if total else ""),
                          "c-rows"))
        if detail.get("poisoned"):
            stats.append(("poisoned", fmt_number(detail["poisoned"]), "c-poi"))
        if "max_abs_diff" in detail:
            stats.append(("max abs diff", fmt_number(detail["max_abs_diff"]), ""))
        if "max_rel_diff" in detail:
            stats.append(("max rel diff", fmt_number(detail["max_rel_diff"]), ""))
        item["stats"] = stats
        item["bar"] = _bar(detail, message)
        item["expected"] = detail.get("expected_value")
        item["found"] = detail.get("found_value")
        if detail.get("first_index") is not None:
            item["first_index"] = json.dumps(detail["first_index"])
    elif isinstance(detail.get("expected"), list) and isinstance(detail.get("found"), list):
        expected = [str(x) for x in detail["expected"]]
        found = [str(x) for x in detail["found"]]
        if kind == "names":  # name sets: what is lacking and what is extra
            lacking = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            item["lacking"], item["extra"] = lacking[:MAX_NAMES_LISTED], extra[:MAX_NAMES_LISTED]
            item["lacking_more"] = max(0, len(lacking) - MAX_NAMES_LISTED)
            item["extra_more"] = max(0, len(extra) - MAX_NAMES_LISTED)
        else:  # shapes
            item["expected"] = json.dumps(detail["expected"])
            item["found"] = json.dumps(detail["found"])
    elif "expected" in detail or "found" in detail:
        item["expected"] = _short(detail.get("expected"))
        item["found"] = _short(detail.get("found"))
        if detail.get("expected_family") or detail.get("found_family"):
            item["stats"] = [("families", f"{detail.get('expected_family', '?')} → "
                                          f"{detail.get('found_family', '?')}", "")]
    for key in ("expected", "found"):
        if item[key] is not None:
            item[key] = _short(item[key])
    if item["stats"] and "mismatched" in detail:
        # The message's last line: "first at [i]: expected X, found Y (dtype); where".
        tail = _TENSOR_TAIL.search(message.splitlines()[-1]) if message else None
        if tail:
            item["dtype"], item["where"] = tail.group(1), tail.group(2)
    structured = item["stats"] or item["expected"] is not None or item["lacking"] or item["extra"]
    # The text says nothing the structured fields do not, except where it could not be parsed.
    item["show_message"] = bool(message) and (not structured or (
        "mismatched" in detail and item["dtype"] is None))
    return item


def _row_view(d: dict[str, Any]) -> dict[str, Any]:
    """One line of the compact table: what, how many, where, how far."""
    item = _item_view(d)
    stats = {label: value for label, value, _ in item["stats"]}
    values = ""
    if item["expected"] is not None or item["found"] is not None:
        values = f"{item['expected'] if item['expected'] is not None else '-'} → " \
                 f"{item['found'] if item['found'] is not None else '-'}"
    elif not item["stats"]:
        values = item["message"].splitlines()[0] if item["message"] else ""
    return {"kind": item["kind"], "subject": item["subject"],
            "mismatched": stats.get("mismatched", ""), "rows": stats.get("rows", ""),
            "poisoned": stats.get("poisoned", ""), "max_abs": stats.get("max abs diff", ""),
            "vals": _short(values, 160)}


def _short(value: Any, limit: int = 600) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + " …"


def _relocated(path: str, run: dict[str, Any]) -> str:
    """A path the run wrote (a repro checkpoint), where it is now: under the directory the
    report read the run's records from (a downloaded artifact, a copied results folder)."""
    written = run.get("written_at")
    if path and written and (path == written or path.startswith(written.rstrip("/") + "/")):
        return str(Path(run["directory"]) / Path(path).relative_to(written))
    return path


def _card_view(index: int, record: dict[str, Any], run: dict[str, Any], repeats: int,
               badges: list[dict[str, Any]], status: str | None, since: str | None
               ) -> dict[str, Any]:
    items = [d for d in record.get("divergences") or [] if isinstance(d, dict)]
    full, rows = items[:MAX_ITEMS_PER_CARD], items[MAX_ITEMS_PER_CARD:MAX_ROWS_PER_CARD]
    test = str(record.get("test") or "?")
    severity = str(record.get("severity") or min(
        (str(d.get("severity") or "divergence") for d in items), key=_severity_rank,
        default="divergence"))
    return {
        "id": f"d{index}", "severity": severity, "property": str(record.get("property") or "?"),
        "test": test, "test_name": test.split("::")[-1],
        "loader": str(record.get("loader") or run["loader"]),
        "run": run["id"], "cell": run["cell"], "case": str(record.get("case") or ""),
        "checkpoint": str(record.get("checkpoint") or ""),
        "options": str(record.get("options") or ""),
        "examples": record.get("examples_before_failure"), "rerun": str(record.get("rerun") or ""),
        "repro": _relocated(str(record.get("repro_checkpoint") or ""), run),
        "repeats": repeats,
        "repro_command": str(record.get("repro_command") or "").replace(
            str(record.get("repro_checkpoint") or "\0"),
            _relocated(str(record.get("repro_checkpoint") or ""), run)),
        "unshrunk": record.get("stage") == "first",
        "diffs": [_item_view(d) for d in full], "rows": [_row_view(d) for d in rows],
        "total_items": len(items),
        "more": [str(d.get("subject") or d.get("kind") or "?")
                 for d in items[MAX_ROWS_PER_CARD:MAX_ROWS_PER_CARD + MAX_NAMES_LISTED]],
        "more_count": max(0, len(items) - MAX_ROWS_PER_CARD),
        "signature": record_signature(record), "headline": headline(record),
        "badges": badges, "status": status, "since": since,
        "known": str(record.get("entry") or "") if record.get("type") == "known" else "",
    }


def _dedup_key(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if k not in _VOLATILE},
                      sort_keys=True, default=str)


def _groups(runs: list[Run], run_views: list[dict[str, Any]],
            previous: dict[Key, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One group per (loader, known entry or not, signature): every cell it occurs in, each
    with its status against the previous night (new / still), and how often it repeated."""
    groups: dict[tuple, dict[str, Any]] = {}
    for run, view in zip(runs, run_views):
        counts: Counter[str] = Counter()
        first: dict[str, dict[str, Any]] = {}
        for record in list(run.divergences) + list(run.known):
            key = _dedup_key(record)
            counts[key] += 1
            first.setdefault(key, record)
        for key, record in first.items():
            sig = record_signature(record)
            known = record.get("type") == "known"
            group = groups.setdefault((run.loader, known, sig), {
                "record": record, "view": view, "repeats": 0, "badges": []})
            group["repeats"] += counts[key]
            if _severity_rank(str(record.get("severity"))) < _severity_rank(
                    str(group["record"].get("severity"))):
                group["record"], group["view"] = record, view
            status, since = ("known", None) if known else (None, None)
            if previous is not None and not known:
                before = previous.get((run.loader, view["cell"], sig))
                status, since = ("still", before.get("since")) if before else ("new", None)
            if not any(b["cell"] == view["cell"] for b in group["badges"]):
                group["badges"].append({"cell": view["cell"], "status": status, "since": since,
                                        "run": view["id"]})
    for group in groups.values():
        statuses = [b["status"] for b in group["badges"]]
        group["status"] = min(statuses, key=STATUS_ORDER.index)
        sinces = [b["since"] for b in group["badges"] if b["since"]]
        group["since"] = min(sinces) if sinces else None
    return list(groups.values())


def _fixed(runs: list[Run], run_views: list[dict[str, Any]],
           previous: tuple[dict[Key, dict[str, Any]], set] | None) -> list[dict[str, Any]]:
    """Divergences of the previous night that tonight's same cell no longer shows."""
    if previous is None:
        return []
    items, _ = previous
    now = {(run.loader, view["cell"], record_signature(r)) for run, view in zip(runs, run_views)
           for r in list(run.divergences) + list(run.known)}
    ran = {(run.loader, view["cell"]) for run, view in zip(runs, run_views)}
    return [{"loader": k[0], "cell": k[1], "signature": k[2], "since": v.get("since"),
             "property": v.get("property"), "severity": v.get("severity")}
            for k, v in sorted(items.items())
            if (k[0], k[1]) in ran and k not in now and not v.get("known")]


def report_context(runs: list[Run], title: str | None = None,
                   previous: tuple[dict[Key, dict[str, Any]], set] | None = None,
                   base: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain data. `base`: the folder the page will be
    written to, which its links to repro checkpoints are relative to."""
    run_views = []
    for number, run in enumerate(runs, 1):
        unique = {_dedup_key(r) for r in run.divergences}
        view = _run_view(number, run, len(unique), len({str(r.get("test")) for r in run.divergences}))
        view["outcomes"] = dict(outcome_counts(run))
        run_views.append(view)

    groups = _groups(runs, run_views, previous[0] if previous else None)
    groups.sort(key=lambda g: (STATUS_ORDER.index(g["status"]),
                               _severity_rank(str(g["record"].get("severity") or "divergence")),
                               g["view"]["loader"], _family_key(str(g["record"].get("property") or "")),
                               str(g["record"].get("test") or "")))
    cards = [_card_view(i, g["record"], g["view"], g["repeats"], g["badges"], g["status"],
                        g["since"]) for i, g in enumerate(groups, 1)]
    failing = [c for c in cards if c["status"] != "known"]
    for card in cards:
        card["repro_href"] = (os.path.relpath(card["repro"], base) if card["repro"] and base
                              else card["repro"])

    loaders = sorted({r["loader"] for r in run_views} | {c["loader"] for c in cards})
    families = sorted({c["property"] for c in cards}, key=_family_key)
    cells = sorted({r["cell"] for r in run_views},
                   key=lambda c: (c.split(" · ")[0], _version_key(c.split("torch ")[-1])))
    # The filters match cards by index into these lists (short attributes, nothing to escape).
    for card in cards:
        card["f"], card["l"] = families.index(card["property"]), loaders.index(card["loader"])
        card["c"] = " ".join(str(cells.index(b["cell"])) for b in card["badges"])
    loaders_with_runs = {r["loader"] for r in run_views if r["version"] != "-" or r["torch"] != "-"}

    by_family = Counter((c["property"], c["loader"]) for c in failing)
    summary = [{"family": f, "cells": [{"loader": l, "count": by_family[(f, l)],
                                        "state": "bad" if by_family[(f, l)] else
                                        ("ok" if l in loaders_with_runs else "none")}
                                       for l in loaders],
                "total": sum(by_family[(f, l)] for l in loaders)}
               for f in families if any(by_family[(f, l)] for l in loaders)]
    loader_totals = [sum(by_family[(f, l)] for f in families) for l in loaders]

    matrix_runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for view in run_views:
        matrix_runs[(view["loader"], view["cell"])].append(view)
    state_order = ("incomplete", "fail", "not tested", "known", "pass")
    matrix = []
    for loader in loaders:
        row = []
        for cell in cells:
            views = matrix_runs.get((loader, cell), [])
            outcomes: Counter[str] = Counter()
            for v in views:
                outcomes.update(v["outcomes"])
            state = min((v["state"] for v in views), key=state_order.index, default="none")
            row.append({"cell": cell, "runs": len(views),
                        "divergences": sum(v["divergences"] for v in views),
                        "tests": sum(v["failing_tests"] for v in views),
                        "known": sum(v["known"] for v in views),
                        "fixed": sum(len(v["fixed"]) for v in views),
                        "passed": outcomes.get("passed"), "failed": outcomes.get("failed"),
                        "skipped": outcomes.get("skipped"), "label": state,
                        "state": {"fail": "bad", "pass": "ok", "known": "known",
                                  "none": "none"}.get(state, "untested")})
        matrix.append({"loader": loader, "cells": row})

    severities = Counter(c["severity"] for c in failing)
    fixed = _fixed(runs, run_views, previous)
    statuses = Counter(c["status"] for c in cards)
    return {
        "title": title or ("loadcheck: " + (loaders[0] if len(loaders) == 1 else
                                            f"{len(loaders)} loaders" if loaders else "no runs")),
        "generated": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "runs": run_views, "cards": cards, "loaders": loaders, "families": families,
        "cells": cells, "summary": summary, "loader_totals": loader_totals, "matrix": matrix,
        "family_counts": Counter(c["property"] for c in cards),
        "loader_counts": Counter(c["loader"] for c in cards),
        "cell_counts": Counter(b["cell"] for c in cards for b in c["badges"]),
        "severities": [(s, severities[s]) for s in sorted(severities, key=_severity_rank)],
        "repeats": sum(c["repeats"] - 1 for c in cards),
        "failing": len(failing), "known_count": statuses["known"],
        "has_previous": previous is not None, "new_count": statuses["new"],
        "still_count": statuses["still"], "fixed": fixed,
        "new_cards": [c for c in failing if c["status"] in ("new", None)],
        "incomplete": [r for r in run_views if r["state"] == "incomplete"],
    }


def render_report(runs: list[Run], title: str | None = None, previous=None,
                  base: Path | None = None) -> str:
    return _environment().get_template("report.html.j2").render(
        **report_context(runs, title, previous, base))


def build_report(paths: Iterable[str | Path], output: str | Path, title: str | None = None,
                 previous: str | Path | None = None) -> Path:
    """Read the records under `paths` (records-*.jsonl files, result directories, or folders
    of result directories), render the report and write it to `output` (and its history
    file beside it); returns its path. `previous`: the previous night's results or history."""
    output = Path(output)
    runs = read_runs(paths)
    before = previous_divergences(previous) if previous is not None else None
    html = render_report(runs, title, before, output.absolute().parent)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    write_history(output, runs, before[0] if before else None)
    return output
