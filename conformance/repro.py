"""`python -m conformance.repro DIR [--loader NAME]`: replay one saved failure without
Hypothesis. DIR is a repro checkpoint saved beside the records; the case it was loaded
with (spec, options, property) sits in DIR/loadcheck-case.json. The properties whose
failure is one load compared with the reference's (REPLAYED) are replayed whole: exit 1
when the loader still diverges, 0 when it agrees. For any other property (offload, reload,
forward, tensor parallel, bytes, FP8 paths...) the checkpoint holds only part of the case:
the load is replayed and reported, and the exit is 3 (not a verdict on the property),
with a pointer to the record's re-run line, which replays the property itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CASE_FILE = "loadcheck-case.json"
NOT_REPLAYED = 3
# Properties whose failing example is one load of the saved checkpoint compared with the
# reference's (the properties that fail through harness.check_case, and the hostile ones).
REPLAYED = frozenset({
    "P2 coverage", "P1 split/fused", "P14 name mapping", "dtype rules", "shape mismatch",
    "order", "P10 tying", "P6 tracking", "P6 unexpected keys", "P6 strict", "P6 FP8 tracking",
    "P8 meta init", "P8 meta submodule", "P11 sharded index", "P11 hostile checkpoint",
    "P11 corrupted bytes", "P3 FP8 scale slots", "P3 FP8 fused/split", "P4 online FP8",
    "P12 non-finite"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.repro")
    parser.add_argument("checkpoint", help="a repro checkpoint directory from the records")
    parser.add_argument("--loader", help="loader to check (default: the one that failed)")
    args = parser.parse_args(argv)
    directory = Path(args.checkpoint)
    try:
        case = json.loads((directory / CASE_FILE).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {directory / CASE_FILE}: {exc}", file=sys.stderr)
        return 2

    from reference.contract import LoadOptions, ModelSpec
    from reference.loading import ReferenceLoader
    from .compare import compare_outcomes, run_outcome
    from .harness import name_sets
    from .loaders import LoaderResolutionError, resolve
    try:
        candidate = resolve(args.loader or case["loader"])
    except LoaderResolutionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec, options = ModelSpec.from_dict(case["spec"]), LoadOptions(**case["options"])
    reference = ReferenceLoader(variants=dict(candidate.variants))
    expected = run_outcome(lambda: reference.load(str(directory), spec, options))
    found = run_outcome(lambda: candidate.load(str(directory), spec, options))
    divergences = compare_outcomes(expected, found, name_sets=name_sets(
        frozenset(candidate.capabilities)), device=options.device,
        any_refusal=case["property"].startswith("P11 "))
    print(f"{case['property']}: {spec.summary()} | {options.summary()}")
    print(f"reference: {expected.describe()}\ncandidate: {found.describe()}")
    for divergence in divergences:
        print(f"  - {divergence.message}")
    if case["property"] not in REPLAYED:
        print(f"the load {'diverges' if divergences else 'agrees'}; {case['property']!r} "
              f"needs more than this checkpoint (what the property did after loading): "
              f"replay it with the re-run line of its record (records-*.jsonl, 'rerun')")
        return NOT_REPLAYED
    print("diverges" if divergences else "agrees")
    return 1 if divergences else 0


if __name__ == "__main__":
    sys.exit(main())
