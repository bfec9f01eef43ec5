"""Baselines from a run's records, and the findings tables generated from baselines.

`entries_from_runs` turns every failure a run recorded into an entry (one per test, one
match per distinct divergence: kind, subject as a pattern, error families, and the
narrowest `case` the recorded examples share), skipping what an existing baseline already
knows, so `write --merge` grows a baseline without touching the entries a maintainer has
reviewed."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from . import CASE_FEATURES, Baseline, Entry, Match, divergence_key, short_test

__all__ = ["entries_from_runs", "extend_from_run", "dumps", "findings_table", "update_findings",
           "BLOCK_BEGIN", "BLOCK_END"]


def _seen(meta: dict[str, Any]) -> str:
    return (f"{meta.get('loader') or '?'} {meta.get('loader_version') or '?'} / "
            f"torch {meta.get('torch') or '?'} / {meta.get('device') or '?'}")


def _common_pattern(subjects: list[str]) -> str:
    """One pattern for several subjects of one kind: their common prefix and suffix around
    a `*` ('model.layers.*.self_attn.q_proj.weight' and '...mlp.down_proj.weight' ->
    'model.layers.*.*_proj.weight')."""
    if len(set(subjects)) == 1:
        return subjects[0]
    prefix = subjects[0]
    for s in subjects[1:]:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    suffix = subjects[0]
    for s in subjects[1:]:
        while not s.endswith(suffix):
            suffix = suffix[1:]
    suffix = suffix[max(0, len(prefix) + len(suffix) - min(map(len, subjects))):]
    return (prefix + "*" + suffix).replace("**", "*")


def _narrowest_case(examples: list[Mapping[str, str] | None]) -> tuple[tuple[str, str], ...] | None:
    """The narrowest `case` match that every recorded example's case_features satisfy: a
    feature they share pinned ('float64'), one they differ in as the common pattern of its
    values ('bfloat16', 'float16' -> '*float16'), left out where that pattern is '*' or an
    example lacks the feature. None when an example's features were not recorded (older
    records): nothing is then known about the case. The narrowing is only what this run
    drew; a reviewer widens a feature that is incidental to the bug."""
    if not examples or any(features is None for features in examples):
        return None
    case = {}
    for name in CASE_FEATURES:
        values = [features.get(name) for features in examples]
        if all(value is not None for value in values):
            wanted = _common_pattern([str(value) for value in values])
            if wanted != "*":
                case[name] = wanted
    return tuple(sorted(case.items())) or None


def _collapse(keys: list[dict[str, str]], examples: dict[tuple, list[Any]]
              ) -> list[dict[str, Any]]:
    """Matches that differ only in their subject become one (the same bug met in several
    tensors of one example), narrowed to the case of the examples they were recorded in
    (`examples`: key items -> the case_features of each record holding that key)."""
    groups: dict[tuple, tuple[list[str], list[Any]]] = {}
    for key in keys:
        rest = tuple(sorted((k, v) for k, v in key.items() if k != "subject"))
        subjects, seen_in = groups.setdefault(rest, ([], []))
        subjects.append(key["subject"])
        seen_in += examples[tuple(sorted(key.items()))]
    out = []
    for rest, (subjects, seen_in) in groups.items():
        match: dict[str, Any] = {**dict(rest), "subject": _common_pattern(subjects)}
        case = _narrowest_case(seen_in)
        if case:
            match["case"] = case
        out.append(match)
    return out


def _headline(divergence: dict[str, Any]) -> str:
    text = str(divergence.get("message") or "").splitlines()[0] if divergence.get("message") else ""
    return text if len(text) <= 160 else text[:157] + "..."


def _prefix(baseline: Baseline, loader: str) -> str:
    for entry in baseline.entries:
        match = re.match(r"[A-Za-z]+", entry.id)
        if match:
            return match.group(0)
    name = re.split(r"[.:]", loader)[-1]  # 'tests.mutants.p12_x' -> 'p12_x'
    return (re.sub(r"[^A-Za-z]", "", name)[:1] or "K").upper()


def _next_id(prefix: str, taken: set[str]) -> str:
    number = 1
    while f"{prefix}{number}" in taken:
        number += 1
    taken.add(f"{prefix}{number}")
    return f"{prefix}{number}"


def entries_from_runs(runs: Iterable[Any], baseline: Baseline, prefix: str | None = None
                      ) -> list[Entry]:
    """New entries for every recorded divergence of `runs` (reports.records.Run objects)
    that no entry of `baseline` knows. One entry per test; its matches are the distinct
    divergence keys, each narrowed to the case of the examples it was recorded in; its
    summary the first divergence's headline."""
    # test -> (its distinct keys, summary, versions seen, key items -> each example's features)
    new: dict[str, tuple[list[dict[str, str]], str, set[str], dict[tuple, list[Any]]]] = {}
    runs = list(runs)
    loader = baseline.loader or (runs[0].loader if runs else "")
    prefix = prefix or _prefix(baseline, loader)
    for run in runs:
        for record in run.divergences:
            test = str(record.get("test") or "")
            items = [d for d in record.get("divergences") or [] if isinstance(d, dict)]
            items = baseline.split(test, items, record.get("features"))[1]
            if not items:
                continue
            keys, _, seen, examples = new.setdefault(
                short_test(test), ([], _headline(items[0]), set(), {}))
            seen.add(_seen(run.meta))
            for item in items:
                key = divergence_key(item)
                if key not in keys:
                    keys.append(key)
                examples.setdefault(tuple(sorted(key.items())), []).append(record.get("features"))
    taken = {e.id for e in baseline.entries}
    return [Entry(id=_next_id(prefix, taken), test=test,
                  matches=tuple(Match(**k) for k in _collapse(keys, examples)), summary=summary,
                  seen=tuple(sorted(seen)))
            for test, (keys, summary, seen, examples) in sorted(new.items())]


def extend_from_run(baseline: Baseline, records) -> str:
    """--baseline-write at the end of a run: add an entry for each test whose divergences
    the baseline does not know (from this run's records), write the file, say what changed."""
    from reports.records import read_runs
    runs = [r for r in read_runs([records.directory]) if r.meta.get("run_id") == records.run_id]
    added = entries_from_runs(runs, baseline)
    baseline.entries += added
    baseline.path.parent.mkdir(parents=True, exist_ok=True)
    baseline.path.write_text(dumps(baseline), encoding="utf-8")
    return (f"loadcheck baseline written: {baseline.path}: {len(added)} new entr"
            f"{'y' if len(added) == 1 else 'ies'} ({', '.join(e.id for e in added) or '-'}), "
            f"{len(baseline.entries)} in all; review each entry's summary, class and upstream "
            f"link, then gate with --baseline {baseline.path}")


def dumps(baseline: Baseline) -> str:
    import tomli_w
    header = ("# loadcheck baseline: known divergences of this loader (see `python -m "
              "conformance.baseline --help`).\n# class: bug | declared | ours. Review each "
              "entry's summary, class and upstream link.\n\n")
    return header + tomli_w.dumps(baseline.to_dict())


BLOCK_BEGIN = "<!-- baseline {name}: generated by `python -m conformance.baseline findings`; edit the baseline, not this table -->"
BLOCK_END = "<!-- end of baseline {name} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _feature_text(value: Any) -> str:
    """A match value as a findings table shows it: a `case` table as (name=pattern, ...)."""
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={v}" for k, v in value.items()) + ")"
    return str(value)


def findings_table(baseline: Baseline, name: str) -> str:
    """The Markdown table of a baseline's entries, as the findings pages show it."""
    lines = [f"Known divergences of `{baseline.loader or name}` "
             f"(`conformance/baselines/{name}`, {len(baseline.entries)} entries; run with "
             f"`--baseline {name.removesuffix('.toml')}`):", "",
             "| id | class | property test | what diverges | upstream | seen on |",
             "|---|---|---|---|---|---|"]
    for e in baseline.entries:
        what = "; ".join(" ".join(f"{k}={_feature_text(v)}" for k, v in m.to_dict().items())
                         for m in e.matches)
        lines.append(f"| {e.id} | {e.klass} | `{_cell(e.test)}` | "
                     f"{_cell(e.summary) + ' — ' if e.summary else ''}<sub>{_cell(what)}</sub> | "
                     f"{_cell(e.upstream) or '-'} | {_cell(', '.join(e.seen)) or '-'} |")
    return "\n".join(lines)


def update_findings(text: str, baselines: dict[str, Baseline]) -> tuple[str, list[str]]:
    """Regenerate every marked block of a findings page; returns the new text and the names
    of the baselines whose blocks it holds."""
    found = []
    for name, baseline in baselines.items():
        begin, end = BLOCK_BEGIN.format(name=name), BLOCK_END.format(name=name)
        start = text.find(begin)
        if start < 0:
            continue
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"the block of baseline {name} has no end marker {end!r}")
        text = (text[:start] + begin + "\n\n" + findings_table(baseline, name) + "\n\n"
                + text[stop:])
        found.append(name)
    return text, found
