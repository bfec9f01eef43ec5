"""`python -m reports summary RESULTS...`: a plain-text summary of one or more runs' records:
divergences per property and loader, then one headline and re-run line per divergence.

`python -m reports build RESULTS... -o report.html`: the HTML report (reports.html) of one or
more runs, with the matrix loader x (device, torch version) when they are several."""

from __future__ import annotations

import argparse
import sys
from .records import read_runs


def summary(paths: list[str], markdown: bool = False) -> str:
    from .summary import markdown_summary, text_summary
    runs = read_runs(paths)
    return markdown_summary(runs) if markdown else text_summary(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports")
    commands = parser.add_subparsers(dest="command", required=True)
    summarize = commands.add_parser("summary", help="text summary of records")
    summarize.add_argument("results", nargs="+", help="records-*.jsonl files or result directories")
    summarize.add_argument("--markdown", action="store_true",
                           help="Markdown for a CI step summary (tables, fenced re-run lines)")
    build = commands.add_parser("build", help="self-contained HTML report (and matrix) of records")
    build.add_argument("results", nargs="+", help="records-*.jsonl files, result directories, "
                       "or folders of result directories (several runs merge into one matrix)")
    build.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    build.add_argument("--title", default=None, help="the page title")
    build.add_argument("--previous", default=None, metavar="DIR",
                       help="the previous night's results (or its report's history file): "
                            "marks each divergence new, still failing since <date>, or fixed")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            import time

            from .html import build_report
            start = time.perf_counter()
            path = build_report(args.results, args.output, title=args.title,
                                previous=args.previous)
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) in "
                  f"{time.perf_counter() - start:.2f} s")
        else:
            print(summary(args.results, markdown=args.markdown))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
