"""`python -m conformance.repro DIR [--loader NAME]`: replay one saved failure without
Hypothesis. DIR is a repro checkpoint saved beside the records; the case it was loaded
with (spec, options, property) sits in DIR/loadcheck-case.json. Exit 1 when the loader
still diverges from the reference, 0 when it agrees."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CASE_FILE = "loadcheck-case.json"


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
    print("diverges" if divergences else "agrees")
    return 1 if divergences else 0


if __name__ == "__main__":
    sys.exit(main())
