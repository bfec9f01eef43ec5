"""The HTML report: one self-contained file (inline CSS, JS and SVG; nothing fetched) built
from the suite's records with jinja2 templates (autoescaped).

    build_report(["results/latest"], "report.html")

This module turns records into plain view data (dicts of strings and numbers); the
templates in `reports/templates/` lay it out. Contents: what is new (first screen), the runs
merged (their metadata), a matrix loader x (device, torch version), a summary property
family x loader, and a card per divergence group: the same divergence (loader and signature)
in several cells is one card with a badge per cell; divergences a baseline knows are cards of
their own, marked known. With a previous night (`previous=`), every group is new, still
failing since a date, or fixed.

Everything a card shows comes from the records' typed fields (reports.schema): it leads with
the root cause's headline, finding and picture (reports.pictures: the mismatch map, the
maps of one fused parameter stacked, the ULP histogram), and groups the example's other
divergences under it. Severity marks the matrix cells, the groups and a filter whose state
the page keeps in its URL's query."""

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
from .pictures import histogram_picture, map_picture
from .schema import FINDINGS, SEVERITIES, Divergence, property_id, severity_rank, worst
from .summary import incomplete_reason, outcome_counts, run_state

__all__ = ["build_report", "render_report", "report_context", "MAX_ITEMS_PER_CARD"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

# A card shows this many tensor-level divergences in full (a loader that gets every tensor
# wrong would otherwise make one card a page long), the next ones as rows of a compact table,
# and names the rest in one line.
MAX_ITEMS_PER_CARD = 4
MAX_ROWS_PER_CARD = 60
MAX_NAMES_LISTED = 24
# Cards beyond this many start collapsed to their headline (a night of 1,000 stays scannable).
OPEN_CARDS = 20

# Fields that differ between replays of one failure without it being another divergence.
_VOLATILE = frozenset({"schema", "examples_before_failure", "repro_checkpoint",
                       "repro_command"})

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


def _family_key(label: str, pid: str | None = None) -> tuple:
    """Properties in number order (P2 before P10), by the record's `property_id`."""
    number = (pid or property_id(label))[1:]
    return (int(number) if number.isdigit() else 10**6, label)


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
        "not_generated": sorted(run.not_generated.items()),
    }


def fmt_bytes(value: Any) -> str:
    """A byte count with its unit: '1.5 KiB (1,536 B)'; text that is not a count, as is."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        return "-" if value is None else str(value)
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{value:,} B" if unit == "B" else f"{size:.3g} {unit} ({value:,} B)"


def _typed(d: dict[str, Any]) -> Divergence:
    """A record's divergence as the schema's dataclass (records.py has checked the line)."""
    return Divergence.from_json(d)


def _finding_text(finding: str) -> str:
    return FINDINGS.get(finding, finding.replace("_", " "))


def _pct(part: int, whole: int) -> str:
    share = 100.0 * part / whole if whole else 0.0
    return f"{share:.3g}%" if share >= 0.1 or not part else "<0.1%"


def _stats(d: Divergence) -> list[tuple[str, str, str]]:
    """(label, value, css class), the figures that say most first: for an FP8 matrix the
    scale and the error after dequantization, then how many codes differ."""
    stats: list[tuple[str, str, str]] = []
    diffs, counts = d.diffs, d.counts
    if d.kind == "fp8":
        if diffs is not None and diffs.dequantized_max_abs is not None:
            stats.append(("dequantized max abs diff", fmt_number(diffs.dequantized_max_abs),
                          "c-mis"))
        scale = (d.expected, d.found) if d.finding in ("scale", "input_scale") and (
            d.expected is not None or d.found is not None) else (
            d.detail.get("expected_scale"), d.detail.get("found_scale"))
        if scale[0] is not None or scale[1] is not None:
            label = "input scale" if d.finding == "input_scale" else "scale"
            stats.append((label, f"{_short(scale[0], 40)} → {_short(scale[1], 40)}"
                          if scale[0] != scale[1] else f"{_short(scale[0], 40)} (equal)", ""))
    if counts is not None:
        label = "codes differing" if d.kind == "fp8" else "mismatched"
        stats.append((label, f"{fmt_number(counts.mismatched)} / {fmt_number(counts.numel)} "
                             f"({_pct(counts.mismatched, counts.numel)})", "c-mis"))
        if counts.poisoned:
            stats.append(("never written (poison)", fmt_number(counts.poisoned), "c-poi"))
        if counts.non_finite:
            stats.append(("NaN / inf", fmt_number(counts.non_finite), "c-poi"))
    if d.rows:
        total = d.shape[0] if d.shape else None
        stats.append(("rows", f"{d.rows[0]}:{d.rows[1]}" + (f" of {total}" if total else ""),
                      "c-rows"))
    if diffs is not None:
        for label, value in (("max abs diff", diffs.max_abs), ("max rel diff", diffs.max_rel),
                             ("max ULP", diffs.max_ulp)):
            if value is not None:
                stats.append((label, fmt_number(value), ""))
    if d.kind == "error" and (d.expected_family or d.found_family):
        stats.append(("families", f"{d.expected_family or '?'} → {d.found_family or '?'}", ""))
    return stats


def _values(d: Divergence) -> tuple[str | None, str | None]:
    """Expected and found as the card shows them: byte counts with units; scales are
    already among the stats."""
    if d.kind == "fp8" and d.finding in ("scale", "input_scale"):
        return None, None
    if d.kind == "bytes":
        return fmt_bytes(d.expected), fmt_bytes(d.found)
    return (None if d.expected is None else _short(d.expected),
            None if d.found is None else _short(d.found))


def _item_view(d: Divergence, stack: list[Divergence] | None = None) -> dict[str, Any]:
    """One divergence in full; `stack`: the divergences its picture shows (its fused
    parameter's other diverging slots, in slot order)."""
    expected, found = _values(d)
    item: dict[str, Any] = {
        "kind": d.kind, "subject": d.subject, "severity": d.severity, "finding": d.finding,
        "finding_text": _finding_text(d.finding), "headline": d.headline, "dtype": d.dtype,
        "shape": json.dumps(d.shape) if d.shape else None, "stats": _stats(d),
        "expected": expected, "found": found,
        "first_index": json.dumps(d.first_index) if d.first_index is not None else None,
        "where": [(label, part.text()) for label, part in
                  (("slot", d.slot), ("source", d.source), ("tp", d.tp)) if part is not None],
        "map": map_picture(stack or [d]),
        "map_from": stack[0].headline if stack and d not in stack else "",
        "hist": histogram_picture(d.diffs.ulp_histogram if d.diffs else None),
        "lacking": [], "extra": [], "lacking_more": 0, "extra_more": 0,
    }
    listed = d.detail.get("expected"), d.detail.get("found")
    if d.kind == "names" and all(isinstance(x, list) for x in listed):
        expected_set, found_set = ({str(x) for x in xs} for xs in listed)
        lacking, extra = sorted(expected_set - found_set), sorted(found_set - expected_set)
        item["lacking"], item["extra"] = lacking[:MAX_NAMES_LISTED], extra[:MAX_NAMES_LISTED]
        item["lacking_more"] = max(0, len(lacking) - MAX_NAMES_LISTED)
        item["extra_more"] = max(0, len(extra) - MAX_NAMES_LISTED)
    structured = (item["stats"] or expected is not None or found is not None
                  or item["lacking"] or item["extra"] or item["where"])
    # The full text is shown only where the fields say nothing more than the headline (a
    # crash's output, say); it is never read back.
    item["message"] = d.message if not structured and d.message.strip() != d.headline else ""
    return item


def _row_view(d: Divergence) -> dict[str, Any]:
    """One line of the compact table: what, which finding, how many, how far."""
    counts, diffs = d.counts, d.diffs
    expected, found = _values(d)
    far = diffs.dequantized_max_abs if d.kind == "fp8" and diffs else (
        diffs.max_abs if diffs else None)
    return {"kind": d.kind, "subject": d.subject, "finding": d.finding.replace("_", " "),
            "severity": d.severity,
            "mismatched": (f"{fmt_number(counts.mismatched)} / {fmt_number(counts.numel)}"
                           if counts else ""),
            "poisoned": fmt_number(counts.poisoned) if counts and counts.poisoned else "",
            "max_abs": fmt_number(far) if far is not None else "",
            "vals": _short(f"{expected or '-'} → {found or '-'}", 160)
            if expected is not None or found is not None else _short(d.headline, 160)}

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


def _picture_stack(root: Divergence, items: list[Divergence]) -> list[Divergence]:
    """The divergences drawn in the root cause's picture: it and the other diverging slots
    of its fused parameter. A structural finding without a map of its own (every TP rank
    holds the same slice) is drawn from the same tensor's comparison, which has one."""
    if root.map is None:
        drawn = next((d for d in items if d.map is not None and d.subject == root.subject), None)
        if drawn is None:
            return [root]
        root = drawn
    if root.slot is None:
        return [root]
    return [d for d in items if d is root or (d.slot is not None and d.slot.fused ==
                                               root.slot.fused and d.map is not None)]


def _more_summary(items: list[Divergence]) -> str:
    """'20 unwritten, 5 values': what the rest of a card's divergences are, by finding."""
    counts = Counter(d.finding.replace("_", " ") for d in items)
    return ", ".join(f"{n} {finding}" for finding, n in counts.most_common())


def _card_view(index: int, record: dict[str, Any], run: dict[str, Any], repeats: int,
               badges: list[dict[str, Any]], status: str | None, since: str | None
               ) -> dict[str, Any]:
    """A card leads with the root cause (its headline, finding and picture, the picture
    stacking the other slots of its fused parameter); the other divergences of the example
    follow under 'and N more', a few in full, then as table rows, then by name."""
    items = [_typed(d) for d in record.get("divergences") or [] if isinstance(d, dict)]
    cause = record.get("root_cause") if isinstance(record.get("root_cause"), int) else 0
    cause = cause if 0 <= cause < len(items) else 0
    root = items[cause] if items else None
    others = [d for i, d in enumerate(items) if i != cause]
    full = others[:MAX_ITEMS_PER_CARD - 1]
    rows = others[MAX_ITEMS_PER_CARD - 1:MAX_ROWS_PER_CARD]
    rest = others[MAX_ROWS_PER_CARD:]
    test = str(record.get("test") or "?")
    severity = str(record.get("severity") or worst(d.severity for d in items))
    return {
        "id": f"d{index}", "open": index <= OPEN_CARDS, "severity": severity, "property": str(record.get("property") or "?"),
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
        "headline": str(record.get("headline") or (root.headline if root else "")),
        "finding": root.finding if root else "", "root_of": len(items),
        "finding_text": _finding_text(root.finding) if root else "",
        "root": _item_view(root, _picture_stack(root, items)) if root else None,
        "diffs": [_item_view(d) for d in full], "rows": [_row_view(d) for d in rows],
        "others": len(others), "others_summary": _more_summary(others),
        "total_items": len(items),
        "more": [d.subject or d.kind for d in rest[:MAX_NAMES_LISTED]],
        "more_count": len(rest),
        "signature": record_signature(record),
        "property_id": str(record.get("property_id") or property_id(str(record.get("property") or ""))),
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
                               g["view"]["loader"],
                               _family_key(str(g["record"].get("property") or ""),
                                           g["record"].get("property_id")),
                               str(g["record"].get("test") or "")))
    cards = [_card_view(i, g["record"], g["view"], g["repeats"], g["badges"], g["status"],
                        g["since"]) for i, g in enumerate(groups, 1)]
    failing = [c for c in cards if c["status"] != "known"]
    for card in cards:
        card["repro_href"] = (os.path.relpath(card["repro"], base) if card["repro"] and base
                              else card["repro"])

    loaders = sorted({r["loader"] for r in run_views} | {c["loader"] for c in cards})
    family_ids = {c["property"]: c["property_id"] for c in cards}
    families = sorted(family_ids, key=lambda f: _family_key(f, family_ids[f]))
    cell_of = {view["cell"]: run.cell for run, view in zip(runs, run_views)}
    cells = sorted(cell_of, key=lambda c: (cell_of[c][0], _version_key(cell_of[c][1])))
    # The filters match cards by index into these lists (short attributes, nothing to escape);
    # the URL names them ("?loader=vllm&cell=cuda/2.14.0&severity=critical"), so a link
    # pasted into an issue restores the filter on another night's page too.
    for card in cards:
        card["f"], card["l"] = families.index(card["property"]), loaders.index(card["loader"])
        card["c"] = " ".join(str(cells.index(b["cell"])) for b in card["badges"])
    loaders_with_runs = {r["loader"] for r in run_views if r["version"] != "-" or r["torch"] != "-"}

    by_family: dict[tuple[str, str], Counter] = defaultdict(Counter)
    by_cell: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for card in failing:
        by_family[(card["property"], card["loader"])][card["severity"]] += 1
        for badge in card["badges"]:
            by_cell[(card["loader"], badge["cell"])][card["severity"]] += 1
    summary = [{"family": f, "cells": [{"loader": l, "count": sum(by_family[(f, l)].values()),
                                        "severity": worst(by_family[(f, l)]),
                                        "state": "bad" if by_family[(f, l)] else
                                        ("ok" if l in loaders_with_runs else "none")}
                                       for l in loaders],
                "total": sum(sum(by_family[(f, l)].values()) for l in loaders)}
               for f in families if any(by_family[(f, l)] for l in loaders)]
    loader_totals = [sum(sum(by_family[(f, l)].values()) for f in families) for l in loaders]

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
                        "severities": sorted(by_cell[(loader, cell)].items(),
                                             key=lambda kv: _severity_rank(kv[0])),
                        "worst": worst(by_cell[(loader, cell)]) if by_cell[(loader, cell)]
                        else "",
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
        "cells": cells, "cell_names": [f"{cell_of[c][0]}/{cell_of[c][1]}" for c in cells],
        # a property by its id in the URL (P2), by its label where two labels share an id
        "family_names": [family_ids[f] if family_ids[f] and list(family_ids.values()).count(
            family_ids[f]) == 1 else f for f in families],
        "severity_names": [s for s in SEVERITIES if any(c["severity"] == s for c in cards)],
        "summary": summary, "loader_totals": loader_totals, "matrix": matrix,
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
