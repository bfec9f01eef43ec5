"""Plain-text and Markdown summaries of runs: per run, what is new (failing), what the
baseline knows, what it says is fixed, and whether the run was complete; then one headline
and re-run line per divergence, most severe first."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .records import Run
from .schema import SEVERITIES as SEVERITY_ORDER, severity_rank

__all__ = ["SEVERITY_ORDER", "severity_rank", "headline", "run_line", "incomplete_reason",
           "text_summary",
           "markdown_summary"]


def headline(record: dict[str, Any]) -> str:
    """The record's root cause, in one line (reports.schema.read_line fills it in for
    records written before the suite wrote one)."""
    return str(record.get("headline") or "")


def outcome_counts(run: Run) -> Counter:
    last: dict[str, str] = {}
    for record in run.outcomes:
        if record.get("test"):
            last[str(record["test"])] = str(record.get("outcome"))
    return Counter(last.values())


def run_state(run: Run) -> str:
    """'incomplete' (no end line, or collected tests that never reported), 'not tested'
    (nothing passed or failed), 'fail' (a new divergence or a failed test), 'known' (only
    baseline divergences), or 'pass'."""
    counts = outcome_counts(run)
    if run.complete is False:
        return "incomplete"
    if run.divergences or counts.get("failed"):
        return "fail"
    if not counts.get("passed"):
        return "not tested"
    if run.verdict and (run.verdict.get("fixed") and run.verdict.get("strict")):
        return "fail"
    return "known" if run.known else "pass"


def _entries(run: Run, which: str) -> list[str]:
    value = (run.verdict or {}).get(which) or []
    return sorted(value) if isinstance(value, (list, dict)) else []


def run_line(run: Run) -> str:
    meta, counts = run.meta, outcome_counts(run)
    tests = {d.get("test") for d in run.divergences}
    parts = [f"{run.loader} {meta.get('loader_version') or ''} · {meta.get('device')} · "
             f"torch {meta.get('torch')} · {meta.get('profile')}: {run_state(run).upper()}",
             f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
             f"{counts.get('skipped', 0)} skipped",
             f"{len(run.divergences)} new divergence(s) in {len(tests)} test(s)"]
    if run.verdict is not None:
        known, fixed = _entries(run, "known"), _entries(run, "fixed")
        parts.append(f"known {len(known)}" + (f" ({', '.join(known)})" if known else ""))
        parts.append(f"fixed {len(fixed)}" + (f" ({', '.join(fixed)})" if fixed else ""))
    if run.not_generated:
        parts.append("not generated (outside the loader's model support): " + ", ".join(
            f"{feature} x{count}" for feature, count in sorted(run.not_generated.items())))
    if run.complete is False:
        parts.append(incomplete_reason(run))
    return "; ".join(parts)


def incomplete_reason(run: Run) -> str:
    """Why a run is incomplete, naming the tests that never reported."""
    missing = run.unreported
    named = (f"{len(missing)} of {len(run.collected or [])} collected tests never reported"
             + (f" ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
                if missing else ""))
    if run.end is None:
        return ("the run did not finish (no end line): what it did not test is unknown"
                + (f"; {named}" if run.collected is not None else ""))
    return f"{named}: they were not tested"


def _ordered(run: Run) -> list[dict[str, Any]]:
    return sorted(run.divergences, key=lambda d: (severity_rank(d.get("severity")),
                                                 str(d.get("property")), str(d.get("test"))))


def text_summary(runs: list[Run]) -> str:
    lines = [f"{sum(len(r.divergences) for r in runs)} new divergence(s) in {len(runs)} run(s)"]
    lines += ["  " + run_line(r) for r in runs]
    # every run's divergences together, worst first (critical before crash, hang, the rest)
    everything = sorted((d for run in runs for d in run.divergences),
                        key=lambda d: (severity_rank(d.get("severity")), str(d.get("property")),
                                       str(d.get("test"))))
    for d in everything:
        lines += ["", f"[{d.get('severity', 'divergence')}] [{d.get('property')}] "
                      f"{d.get('test')} ({d.get('loader')}): {headline(d)}",
                  f"  case: {d.get('case')}", f"  re-run: {d.get('rerun')}"]
        if d.get("repro_checkpoint"):
            lines.append(f"  checkpoint: {d['repro_checkpoint']}")
        if d.get("repro_command"):
            lines.append(f"  replay: {d['repro_command']}")
    for run in runs:
        for entry_id in _entries(run, "fixed"):
            summary = ((run.verdict or {}).get("summaries") or {}).get(entry_id, "")
            lines += ["", f"[fixed] baseline entry {entry_id} no longer reproduces"
                          + (f": {summary}" if summary else "")]
    return "\n".join(lines)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_summary(runs: list[Run]) -> str:
    """GitHub's step summary: a table per run of new / known / fixed per property, then
    the new divergences with their re-run lines in fenced blocks."""
    out = []
    for run in runs:
        out += [f"### {_md(run_line(run))}", ""]
        rows: dict[str, Counter] = {}
        for d in run.divergences:
            rows.setdefault(str(d.get("property")), Counter())["new"] += 1
        for k in run.known:
            rows.setdefault(str(k.get("property")), Counter())["known"] += 1
        fixed = _entries(run, "fixed")
        if rows or fixed:
            out += ["| property | new | known |", "|---|---|---|"]
            out += [f"| {_md(p)} | {c['new']} | {c['known']} |" for p, c in sorted(rows.items())]
            if fixed:
                out.append(f"| *fixed baseline entries* | | {', '.join(fixed)} |")
            out.append("")
        for d in _ordered(run):
            out += [f"**{_md(d.get('severity'))}** · {_md(d.get('property'))} · "
                    f"`{_md(d.get('test'))}`: {_md(headline(d))}", "", "```sh",
                    str(d.get("rerun")), "```", ""]
    return "\n".join(out) if out else "No loadcheck records."
