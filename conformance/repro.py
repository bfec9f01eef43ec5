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
import os
import shutil
import stat
import sys
from pathlib import Path

CASE_FILE = "loadcheck-case.json"
NOT_COPIED_FILE = "loadcheck-not-copied.txt"
# A repro is the case's checkpoint (kilobytes); a hostile one may hold a sparse 200 MB file.
REPRO_COPY_LIMIT = 64 * 2**20
NOT_REPLAYED = 3
# Properties whose failing example is one load of the saved checkpoint compared with the
# reference's (the properties that fail through harness.check_case, and the hostile ones).
REPLAYED = frozenset({
    "P2 coverage", "P1 split/fused", "P14 name mapping", "dtype rules", "shape mismatch",
    "order", "P10 tying", "P6 tracking", "P6 unexpected keys", "P6 strict", "P6 FP8 tracking",
    "P8 meta init", "P8 meta submodule", "P11 sharded index", "P11 hostile checkpoint",
    "P11 corrupted bytes", "P3 FP8 scale slots", "P3 FP8 fused/split", "P4 online FP8",
    "P12 non-finite"}) | {  # block FP8 (issue 16)
    "P3b block FP8 checkpoint", "P3b block FP8 fused/split", "P4b online block FP8"}


def save_checkpoint(source: Path, target: Path, limit: int = REPRO_COPY_LIMIT) -> list[str]:
    """Copy a case's checkpoint for replay without following anything out of it: a symlink
    is copied as the link it is (its target is not read), a FIFO, device or socket is not
    copied (reading one may never end), and regular files stop at `limit` bytes in all.
    Returns what was left out, also written to NOT_COPIED_FILE in the copy."""
    shutil.rmtree(target, ignore_errors=True)
    left_out, copied = [], 0
    for root, dirs, files in os.walk(source):  # does not descend into linked directories
        here = Path(root)
        (target / here.relative_to(source)).mkdir(parents=True, exist_ok=True)
        for name in sorted(dirs + files):
            path, relative = here / name, (here / name).relative_to(source)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(path), target / relative)
            elif stat.S_ISDIR(mode):
                continue  # os.walk creates it
            elif not stat.S_ISREG(mode):
                left_out.append(f"{relative}: not a regular file (mode {stat.filemode(mode)})")
            elif copied + path.lstat().st_size > limit:
                left_out.append(f"{relative}: {path.lstat().st_size} bytes, past the "
                                f"{limit}-byte limit of a repro copy")
            else:
                shutil.copyfile(path, target / relative, follow_symlinks=False)
                copied += path.lstat().st_size
    if left_out:
        (target / NOT_COPIED_FILE).write_text("\n".join(left_out) + "\n")
    return left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.repro")
    parser.add_argument("checkpoint", help="a repro checkpoint directory from the records")
    parser.add_argument("--loader", help="loader to check (default: the one that failed)")
    parser.add_argument("--isolate", action="store_true",
                        help="load in a child process, so a crash is reported, not fatal")
    parser.add_argument("--candidate-timeout", type=float, default=None, metavar="SECONDS",
                        help="report the candidate as hung after this long (default 60)")
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
    timeout = args.candidate_timeout or 60.0
    if args.isolate:
        from .survival import IsolatedLoader
        isolated = IsolatedLoader(args.loader or case["loader"], candidate, timeout)
        found = run_outcome(lambda: isolated.load(str(directory), spec, options))
    else:
        from .survival import call_with_timeout
        found = run_outcome(lambda: call_with_timeout(
            lambda: candidate.load(str(directory), spec, options), timeout))
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
