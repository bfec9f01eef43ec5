"""`python -m conformance.baseline`: write a baseline from a run's records, show one, or
regenerate the findings tables from the shipped baselines.

    python -m conformance.baseline write results/latest -o mylib.toml     # adopt: run, write, commit
    python -m conformance.baseline write results/latest -o mylib.toml --merge   # add what is new
    python -m conformance.baseline show mylib.toml
    python -m conformance.baseline findings docs/findings/*.md            # the tables from the baselines
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import SHIPPED, Baseline, BaselineError, load_baseline


def _write(args) -> int:
    from reports.records import read_runs

    from .write import dumps, entries_from_runs
    runs = [r for r in read_runs(args.results) if not args.loader or r.loader == args.loader]
    if not runs:
        print(f"error: no runs{' of ' + args.loader if args.loader else ''} in "
              f"{', '.join(args.results)}", file=sys.stderr)
        return 2
    loaders = sorted({r.loader for r in runs})
    if len(loaders) > 1:
        print(f"error: records of several loaders ({', '.join(loaders)}): pick one with "
              f"--loader", file=sys.stderr)
        return 2
    output = Path(args.output)
    if args.merge and output.exists():
        baseline = load_baseline(output)
    elif output.exists() and not args.force:
        print(f"error: {output} exists: --merge to add what is new, --force to replace it",
              file=sys.stderr)
        return 2
    else:
        baseline = Baseline(path=output, loader=loaders[0])
    added = entries_from_runs(runs, baseline, prefix=args.prefix)
    baseline.entries += added
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dumps(baseline), encoding="utf-8")
    print(f"wrote {output}: {len(added)} new entr{'y' if len(added) == 1 else 'ies'} "
          f"({', '.join(e.id for e in added) or '-'}), {len(baseline.entries)} in all")
    return 0


def _show(args) -> int:
    from .write import findings_table
    baseline = load_baseline(args.baseline)
    print(findings_table(baseline, Path(args.baseline).name))
    return 0


def _findings(args) -> int:
    from .write import update_findings
    directory = Path(args.baselines)
    baselines = {p.name: load_baseline(p) for p in sorted(directory.glob("*.toml"))}
    placed: dict[str, str] = {}
    for doc in args.docs:
        path = Path(doc)
        text, found = update_findings(path.read_text(encoding="utf-8"), baselines)
        path.write_text(text, encoding="utf-8")
        for name in found:
            placed[name] = doc
        print(f"{doc}: {', '.join(found) or 'no baseline blocks'}")
    missing = sorted(set(baselines) - set(placed))
    if missing:
        print(f"not on any page: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.baseline",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="a baseline from the records of a run")
    write.add_argument("results", nargs="+", help="result directories or records files")
    write.add_argument("-o", "--output", required=True, help="the baseline file (.toml)")
    write.add_argument("--merge", action="store_true",
                       help="keep the file's entries and add only divergences they do not know")
    write.add_argument("--force", action="store_true", help="replace an existing file")
    write.add_argument("--loader", help="only the runs of this loader")
    write.add_argument("--prefix", help="id prefix of new entries (default: the file's, or "
                       "the loader's initial)")
    show = commands.add_parser("show", help="a baseline as a table")
    show.add_argument("baseline")
    findings = commands.add_parser("findings", help="regenerate the baseline tables of "
                                   "findings pages")
    findings.add_argument("docs", nargs="+", help="Markdown pages holding baseline blocks")
    findings.add_argument("--baselines", default=str(SHIPPED),
                          help="the directory of baselines (default: the shipped ones)")
    args = parser.parse_args(argv)
    try:
        return {"write": _write, "show": _show, "findings": _findings}[args.command](args)
    except (BaselineError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
