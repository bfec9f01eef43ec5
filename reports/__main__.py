"""`python -m reports summary RESULTS...`: a plain-text summary of one or more runs' records:
divergences per property and loader, then one headline and re-run line per divergence.

`python -m reports build RESULTS... -o report.html`: the HTML report (reports.html) of one or
more runs, with the matrix loader x (device, torch version) when they are several."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from .records import final_divergences, read_records


def summary(paths: list[str]) -> str:
    records = read_records(paths)
    records.divergences = final_divergences(records.divergences)
    loaders = sorted({r["loader"] for r in records.runs} | {d["loader"] for d in records.divergences})
    lines = [f"{len(records.divergences)} divergences in {len(loaders)} loader(s): "
             f"{', '.join(loaders) or '-'}"]
    counts = Counter((d["property"], d["loader"]) for d in records.divergences)
    for (prop, loader), count in sorted(counts.items()):
        lines.append(f"  {prop:28} {loader:48} {count}")
    for d in records.divergences:
        first = d["divergences"][0]["message"].splitlines()[0] if d["divergences"] else ""
        lines += ["", f"[{d['property']}] {d['test']} ({d['loader']}): {first}",
                  f"  case: {d['case']}", f"  re-run: {d['rerun']}"]
        if d.get("repro_checkpoint"):
            lines.append(f"  checkpoint: {d['repro_checkpoint']}")
        if d.get("repro_command"):
            lines.append(f"  replay: {d['repro_command']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports")
    commands = parser.add_subparsers(dest="command", required=True)
    summarize = commands.add_parser("summary", help="text summary of records")
    summarize.add_argument("results", nargs="+", help="records-*.jsonl files or result directories")
    build = commands.add_parser("build", help="self-contained HTML report (and matrix) of records")
    build.add_argument("results", nargs="+", help="records-*.jsonl files, result directories, "
                       "or folders of result directories (several runs merge into one matrix)")
    build.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    build.add_argument("--title", default=None, help="the page title")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            import time

            from .html import build_report
            start = time.perf_counter()
            path = build_report(args.results, args.output, title=args.title)
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) in "
                  f"{time.perf_counter() - start:.2f} s")
        else:
            print(summary(args.results))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
