"""Wall time and peak memory of the reference refusing each resource-hostile class
(generators/hostile_bounds.py) at the largest size an attacker tried, one fresh process per
class (tests/hostile_probe.py). The goals: under 1 s and under 100 MB each. Memory is
asserted in tests/test_hostile_bounds.py; time only printed here (a shared machine's noise
is no test failure):

    python -m pytest benchmarks/test_hostile_bounds.py -s -p no:cacheprovider
"""

from __future__ import annotations

from generators.hostile_bounds import BOUNDED_CLASSES
from tests.hostile_probe import probe


def test_hostile_refusal_time_and_memory(tmp_path):
    rows = []
    for name, cls in sorted(BOUNDED_CLASSES.items()):
        case = cls.case()
        directory = tmp_path / name / "checkpoint"
        directory.mkdir(parents=True)
        case.write(directory)
        result = probe(directory, case.spec, timeout=60)
        assert result["family"] == case.family, (case.name, result)
        rows.append((case.name, result["seconds"], result["peak_bytes"] / 1e6))
    print(f"\n{'class':40} {'seconds':>8} {'peak MB':>8}")
    for name, seconds, peak in rows:
        print(f"{name:40} {seconds:8.3f} {peak:8.1f}")
    print(f"slowest {max(r[1] for r in rows):.3f} s, largest {max(r[2] for r in rows):.1f} MB")
