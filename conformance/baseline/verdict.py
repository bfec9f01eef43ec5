"""The end of a run against a baseline: which entries were seen (known), which no longer
reproduce (fixed), and which could not be judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import Baseline

__all__ = ["Verdict", "judge"]


@dataclass
class Verdict:
    known: dict[str, list[str]] = field(default_factory=dict)   # entry id -> tests it matched in
    fixed: list[str] = field(default_factory=list)               # its tests passed; never matched
    unverified: list[str] = field(default_factory=list)          # its tests failed on something new first
    not_run: list[str] = field(default_factory=list)             # none of its tests ran
    new: list[str] = field(default_factory=list)                 # tests that failed (unknown divergences)

    def to_record(self, baseline: Baseline, strict: bool) -> dict:
        return {"type": "baseline", "file": str(baseline.path), "strict": strict,
                "entries": len(baseline.entries), "known": self.known, "fixed": self.fixed,
                "unverified": self.unverified, "not_run": self.not_run, "new": self.new,
                "classes": {e.id: e.klass for e in baseline.entries},
                "summaries": {e.id: e.summary for e in baseline.entries if e.summary}}

    def lines(self, baseline: Baseline, strict: bool) -> list[str]:
        """The terminal's account: counts first, then each fixed entry by name."""
        by_id = {e.id: e for e in baseline.entries}
        out = [f"loadcheck baseline {baseline.path}: {len(self.new)} test(s) with new "
               f"divergences, {len(self.known)} known entr{'y' if len(self.known) == 1 else 'ies'}"
               f" seen, {len(self.fixed)} fixed, {len(self.unverified)} unverified, "
               f"{len(self.not_run)} not run"]
        if self.known:
            out.append("  known: " + ", ".join(sorted(self.known)))
        for entry_id in self.fixed:
            entry = by_id[entry_id]
            out.append(f"  fixed: {entry_id} ({entry.test}) no longer reproduces"
                       + (f": {entry.summary}" if entry.summary else "")
                       + ("; remove it from the baseline" if strict else ""))
        if self.unverified:
            out.append("  unverified (their test failed on a new divergence first): "
                       + ", ".join(self.unverified))
        return out


def judge(baseline: Baseline, outcomes: Mapping[str, str],
          hits: Iterable[tuple[str, str]]) -> Verdict:
    """`outcomes`: test node id -> 'passed' | 'failed' | 'skipped' (the call phase's, or the
    setup phase's when it did not pass); `hits`: (entry id, node id) for every entry that
    matched a divergence in that test."""
    verdict = Verdict()
    for entry_id, nodeid in hits:
        tests = verdict.known.setdefault(entry_id, [])
        if nodeid not in tests:
            tests.append(nodeid)
    verdict.new = sorted(n for n, o in outcomes.items() if o == "failed")
    for entry in baseline.entries:
        if entry.id in verdict.known:
            continue
        ran = {o for n, o in outcomes.items() if entry.applies_to(n) and o != "skipped"}
        if "passed" in ran:
            verdict.fixed.append(entry.id)
        elif ran:
            verdict.unverified.append(entry.id)
        else:
            verdict.not_run.append(entry.id)
    return verdict
