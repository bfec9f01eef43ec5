"""`python -m conformance.repro DIR [--loader NAME]`: replay one saved failure without
Hypothesis. DIR is a repro checkpoint saved beside the records; the case it was loaded
with (spec, options, property) sits in DIR/loadcheck-case.json. The properties whose
failure is one load compared with the reference's (REPLAYED) are replayed whole: exit 1
when the loader still diverges, 0 when it agrees. For any other property (offload, reload,
forward, tensor parallel, bytes, FP8 paths...) the checkpoint holds only part of the case:
the load is replayed and reported, and the exit is 3 (not a verdict on the property),
with a pointer to the record's re-run line, which replays the property itself.
Files the case reached outside its checkpoint (a hostile case's `../outside.safetensors`,
a link's target, a hub-cache blob) are saved in DIR/loadcheck-outside and laid out beside
the checkpoint again, in a scratch copy, for the replay."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

CASE_FILE = "loadcheck-case.json"
NOT_COPIED_FILE = "loadcheck-not-copied.txt"
# Files of the case outside its checkpoint (save_checkpoint), and where the checkpoint sat.
OUTSIDE_DIR = "loadcheck-outside"
LAYOUT_FILE = "loadcheck-layout.json"
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
    "P3b block FP8 checkpoint", "P4b online block FP8"}
REPLAYED |= {"P3m MXFP4 checkpoint"}  # MXFP4 (issue 16)


def save_checkpoint(source: Path, target: Path, limit: int = REPRO_COPY_LIMIT) -> list[str]:
    """Copy a case's checkpoint for replay without following anything out of it: a symlink
    is copied as the link it is (its target is not read), a FIFO, device or socket is not
    copied (reading one may never end), and regular files stop at `limit` bytes in all.
    Files the checkpoint reaches outside itself, inside the case's own folder (a shard
    linked or named `../outside.safetensors` by a hostile case), are copied too, into
    OUTSIDE_DIR at their place relative to that folder, and absolute links to them become
    relative ones (see `outside_files`); replay() puts them back beside the checkpoint.
    Returns what was left out, also written to NOT_COPIED_FILE in the copy."""
    shutil.rmtree(target, ignore_errors=True)
    source, left_out, copied = source.resolve(), [], 0

    def copy_file(path: Path, to: Path, shown: object) -> None:
        nonlocal copied
        size = path.lstat().st_size
        if copied + size > limit:
            left_out.append(f"{shown}: {size} bytes, past the {limit}-byte limit of a repro copy")
            return
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, to, follow_symlinks=False)
        copied += size

    root = case_folder(source)
    outside = outside_files(source, root)
    for root_dir, dirs, files in os.walk(source):  # does not descend into linked directories
        here = Path(root_dir)
        (target / here.relative_to(source)).mkdir(parents=True, exist_ok=True)
        for name in sorted(dirs + files):
            path, relative = here / name, (here / name).relative_to(source)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                link = os.readlink(path)
                reached = _lexical(path.parent / link)
                if os.path.isabs(link) and reached in outside:  # now where the copy puts it
                    link = os.path.relpath(root / outside[reached], path.parent.resolve())
                os.symlink(link, target / relative)
            elif stat.S_ISDIR(mode):
                continue  # os.walk creates it
            elif not stat.S_ISREG(mode):
                left_out.append(f"{relative}: not a regular file (mode {stat.filemode(mode)})")
            else:
                copy_file(path, target / relative, relative)
    for reached, relative in sorted(outside.items()):
        mode = reached.lstat().st_mode
        if not stat.S_ISREG(mode):
            left_out.append(f"{relative} (outside the checkpoint): not a regular file (mode "
                            f"{stat.filemode(mode)})")
        else:
            copy_file(reached, target / OUTSIDE_DIR / relative, f"{relative} (outside the checkpoint)")
    if outside:
        (target / OUTSIDE_DIR).mkdir(exist_ok=True)
        (target / OUTSIDE_DIR / LAYOUT_FILE).write_text(json.dumps(
            {"checkpoint": str(source.resolve().relative_to(root))}))
    if left_out:
        (target / NOT_COPIED_FILE).write_text("\n".join(left_out) + "\n")
    return left_out


def case_folder(checkpoint: Path) -> Path:
    """The folder a case was written in: the suite's nearest `loadcheck-*` temporary
    directory above the checkpoint (a hub-cache case nests it three levels down), else the
    checkpoint's parent. Nothing outside it is ever copied into a repro."""
    checkpoint = checkpoint.resolve()
    return next((p for p in checkpoint.parents if p.name.startswith("loadcheck-")),
                checkpoint.parent)


def _lexical(path: Path) -> Path:
    """`path` absolute with `..` taken away by name (as a loader joining names would), links
    not resolved."""
    return Path(os.path.normpath(path.absolute()))


def outside_files(checkpoint: Path, root: Path) -> dict[Path, Path]:
    """Files the checkpoint names outside itself but inside `root`, each -> its path relative
    to `root`: symlink targets (absolute, or relative like a hub-cache snapshot's
    `../../blobs/...`) and the index's weight_map values that climb out (`../x`)."""
    checkpoint, root = checkpoint.resolve(), root.resolve()
    reached = []
    for path in checkpoint.rglob("*"):
        if path.is_symlink():
            reached.append(_lexical(path.parent / os.readlink(path)))
    index = checkpoint / "model.safetensors.index.json"
    try:
        if index.is_file() and not index.is_symlink() and index.stat().st_size <= 2**20:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            reached += [_lexical(checkpoint / v) for v in set(weight_map.values())
                        if isinstance(v, str) and v]
    except (OSError, ValueError, AttributeError, RecursionError):
        pass  # an index the case made unreadable names nothing
    out = {}
    for path in reached:
        if path.is_relative_to(checkpoint) or not path.is_relative_to(root):
            continue
        if os.path.lexists(path):
            out[path] = path.relative_to(root)
    return out


def replay_directory(saved: Path, scratch: Path) -> Path:
    """The directory to load a saved repro from: `saved` itself, or, when it holds files
    from outside the checkpoint (OUTSIDE_DIR), a copy under `scratch` laid out as the case
    was: those files at their places and the checkpoint at its own."""
    layout = saved / OUTSIDE_DIR / LAYOUT_FILE
    if not layout.is_file():
        return saved
    shutil.copytree(saved / OUTSIDE_DIR, scratch, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(LAYOUT_FILE))
    checkpoint = scratch / json.loads(layout.read_text())["checkpoint"]
    shutil.copytree(saved, checkpoint, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda d, names: [OUTSIDE_DIR] if Path(d) == saved else [])
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.repro")
    parser.add_argument("checkpoint", help="a repro checkpoint directory from the records")
    parser.add_argument("--loader", help="loader to check (default: the one that failed)")
    parser.add_argument("--isolate", action="store_true",
                        help="load in a child process, so a crash is reported, not fatal")
    parser.add_argument("--candidate-timeout", type=float, default=None, metavar="SECONDS",
                        help="report the candidate as hung after this long (default 60)")
    args = parser.parse_args(argv)
    saved = Path(args.checkpoint)
    try:
        case = json.loads((saved / CASE_FILE).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {saved / CASE_FILE}: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="loadcheck-repro-") as scratch:
        return _replay(case, replay_directory(saved, Path(scratch)), args)


def _replay(case: dict, directory: Path, args: argparse.Namespace) -> int:
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
