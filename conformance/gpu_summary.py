"""The one-page summary of a `./run gpu-check` folder (conformance/gpu_check.py), built from
what the steps wrote, never from their terminal text: `check.json` (each step's exit,
time and budget), pytest's JUnit XML per step (or, for a step interrupted before pytest
wrote it, the outcome log of conformance/outcome_log.py), the records per step (through
`reports.records`), the FP8 figures beside them (`conformance.figures`) and the offload
copy benchmark's JSON (pytest-benchmark's shape).

`python -m conformance.gpu_summary DIR` rebuilds DIR/SUMMARY.md and DIR/summary.json.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from reports.records import final_divergences, read_records
from .figures import read_figures
from .outcome_log import read_outcome_log

__all__ = ["junit_cases", "test_key", "step_tests", "fp8_figures", "copy_figures",
           "build_summary", "render", "write_summary"]

PINNED, ONLOAD = "test_pinned_copy_bandwidth", "test_offloader_onload_throughput"


def test_key(nodeid: str) -> str:
    """`conformance/test_x.py::Class::test[p]` -> `test_x.py::Class::test[p]`."""
    path, sep, rest = nodeid.partition("::")
    return path.rsplit("/", 1)[-1] + sep + rest


def _junit_key(classname: str, name: str) -> str:
    parts = classname.split(".")
    module = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
    return "::".join([parts[module] + ".py", *parts[module + 1:], name])


def _first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def junit_cases(path: Path) -> dict[str, dict[str, Any]]:
    """test key -> {outcome: passed|failed|error|skipped, time, message} from a JUnit XML
    file; {} if there is none (a step killed before pytest wrote it)."""
    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return {}
    cases = {}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = child.get("message") or child.text or ""
                break
        cases[_junit_key(case.get("classname", ""), case.get("name", ""))] = {
            "outcome": outcome, "time": float(case.get("time") or 0), "message": _first_line(message)}
    return cases


def step_tests(junit: Path, outcome_log: Path | None = None,
               records: Path | None = None) -> list[dict[str, Any]]:
    """Every test of one step: JUnit's outcome and time where pytest wrote the file; for a
    step interrupted at its budget, the outcome log's lines, else the records' outcome lines.
    A failing test carries its first divergence's property and headline from the records."""
    cases: dict[str, dict[str, Any]] = {}
    divergences: dict[str, dict] = {}
    if records is not None and records.is_dir():
        found = read_records([records])
        cases = {test_key(o["test"]): {"outcome": o["outcome"], "time": None, "message": ""}
                 for o in found.outcomes}
        for d in final_divergences(found.divergences):
            divergences.setdefault(test_key(d["test"]), d)
    if outcome_log is not None:
        cases.update({test_key(n): {"outcome": o["outcome"], "time": o.get("duration"),
                                    "message": _first_line(o.get("message"))}
                      for n, o in read_outcome_log(outcome_log).items()})
    cases.update(junit_cases(junit))
    tests = []
    for key, case in cases.items():
        note = case["message"]
        d = divergences.get(key)
        if d is not None and case["outcome"] in ("failed", "error"):
            first = d["divergences"][0]["message"] if d.get("divergences") else ""
            note = f"[{d.get('property')}] {_first_line(first)}"
        tests.append({"test": key, "outcome": case["outcome"], "time": case["time"], "note": note})
    return tests


def fp8_figures(records: Path) -> dict[str, Any]:
    """Totals of the FP8 CUDA figures: code and scale agreement with the CPU reference, and
    the worst `_scaled_mm` error as a fraction of the FP8 tolerance."""
    codes = read_figures(records, "fp8_cuda_codes")
    matmuls = read_figures(records, "fp8_cuda_scaled_mm")
    out: dict[str, Any] = {"examples": len(codes)}
    for field in ("matrices", "codes", "codes_differing", "scales", "scales_differing"):
        out[field] = sum(int(c.get(field, 0)) for c in codes)
    out["max_steps_apart"] = max((float(c.get("max_steps_apart", 0)) for c in codes), default=0.0)
    out["matmuls"] = len(matmuls)
    out["max_error_over_tolerance"] = max(
        (float(m["max_error_over_tolerance"]) for m in matmuls), default=None)
    out["max_abs_error"] = max((float(m["max_abs_error"]) for m in matmuls), default=None)
    return out


def copy_figures(path: Path) -> dict[str, Any] | None:
    """Host -> device GB/s (median) of the raw pinned copy and of the offloader's onload,
    and their ratio, from pytest-benchmark's JSON (or benchmarks.offload_copy's)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    rates, nbytes = {}, None
    for bench in data.get("benchmarks", []):
        extra, stats = bench.get("extra_info", {}), bench.get("stats", {})
        nbytes = extra.get("bytes", nbytes)
        rate = extra.get("GB/s (median)")
        if rate is None and extra.get("bytes") and stats.get("median"):
            rate = extra["bytes"] / stats["median"] / 1e9
        rates[bench.get("name", "").split("[")[0]] = rate
    pinned, onload = rates.get(PINNED), rates.get(ONLOAD)
    return {"pinned_gbps": pinned, "onload_gbps": onload, "bytes": nbytes,
            "onload_over_pinned": onload / pinned if pinned and onload is not None else None,
            "measured_by": data.get("measured_by", "pytest-benchmark")}


def build_summary(out: Path) -> dict[str, Any]:
    out = Path(out)
    environment = _json(out / "environment.json") or {}
    check = _json(out / "check.json") or {"steps": []}
    steps = []
    for step in check.get("steps", []):
        name = step["name"]
        tests = step_tests(out / "junit" / f"{name}.xml", out / "outcomes" / f"{name}.jsonl",
                           out / "records" / name)
        counts = {o: sum(t["outcome"] == o for t in tests)
                  for o in ("passed", "failed", "error", "skipped")}
        ok = step["returncode"] == 0 and not step["timed_out"]
        steps.append({**step, "ok": ok, "counts": counts, "tests": tests})
    names = {s["name"] for s in steps}
    failed = [s["name"] for s in steps if not s["ok"]]
    return {
        "verdict": "FAILED" if failed else ("PASSED" if steps else "NOTHING RAN"),
        "failed_steps": failed, "environment": environment, "device": check.get("device"),
        "wall_s": check.get("wall_s"), "budget_s": sum(s["budget_s"] for s in steps),
        "steps": steps,
        "fp8": fp8_figures(out / "records" / "fp8_cuda") if "fp8_cuda" in names else None,
        "copies": copy_figures(out / "bench" / "offload_copy.json"),
    }


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _skip_reason(summary: dict, step: str) -> str:
    for s in summary["steps"]:
        if s["name"] == step:
            skips = {t["note"] for t in s["tests"] if t["outcome"] == "skipped"}
            if not s["ok"]:
                return f"step {step} failed; see logs/{step}.log"
            return "; ".join(sorted(skips)) or f"step {step} wrote none"
    return f"step {step} did not run"


def _n(count: float, word: str) -> str:
    return f"{count:,g} {word}" + ("" if count == 1 else "s")


def _fp8_lines(summary: dict) -> list[str]:
    fp8 = summary["fp8"]
    if not fp8 or not fp8["examples"]:
        return [f"- not measured: {_skip_reason(summary, 'fp8_cuda')}"]
    exact = "exact" if fp8["codes_differing"] == 0 else \
        f"**{fp8['codes_differing']:,} differ**, at most {_n(fp8['max_steps_apart'], 'code step')} apart"
    lines = [f"- codes: {fp8['codes']:,} codes of {fp8['matrices']:,} quantized matrices in "
             f"{_n(fp8['examples'], 'example')}, GPU vs CPU reference: {exact}",
             f"- scales: {fp8['scales']:,} compared, " + (
                 "all equal (bit for bit)" if fp8["scales_differing"] == 0 else
                 f"**{fp8['scales_differing']:,} differ**")]
    if fp8["matmuls"]:
        ratio = fp8["max_error_over_tolerance"]
        lines.append(f"- torch._scaled_mm: {fp8['matmuls']:,} matmuls; worst error "
                     f"{ratio:.3g} of the FP8 tolerance (max abs error "
                     f"{fp8['max_abs_error']:.3g}): " + (
                         "within" if ratio <= 1 else "**beyond the tolerance**"))
    else:
        step = next((s for s in summary["steps"] if s["name"] == "fp8_cuda"), {"tests": []})
        why = next((t["note"] for t in step["tests"] if "scaled_mm" in t["test"]
                    and t["outcome"] != "passed"), "") or "no per-tensor quantized linear drawn"
        lines.append(f"- torch._scaled_mm: not checked: {why}")
    return lines


def _copy_lines(summary: dict) -> list[str]:
    copies = summary["copies"]
    if not copies or copies["pinned_gbps"] is None:
        return [f"- not measured: {_skip_reason(summary, 'offload_copy')}"]
    mb = f"{copies['bytes'] / 1e6:.0f} MB layer" if copies.get("bytes") else "one layer"
    lines = [f"- raw pinned `copy_` ({mb}, median): {copies['pinned_gbps']:.2f} GB/s"]
    if copies["onload_gbps"] is not None:
        lines.append(f"- offloader onload (side stream, events, pinned host copies): "
                     f"{copies['onload_gbps']:.2f} GB/s = {copies['onload_over_pinned']:.0%} of "
                     f"pinned")
    lines.append(f"- measured by {copies['measured_by']}")
    return lines


def render(summary: dict, every_test: bool = True) -> str:
    """The page; `every_test=False` lists only the tests that did not pass (the terminal)."""
    env = summary["environment"]
    if env.get("gpu"):
        machine = (f"{env['gpu']} ({env.get('capability')}, {env.get('gpu_memory_gib')} GiB"
                   + (f", driver {env['driver']}" if env.get("driver") else "")
                   + ("" if env.get("fp8_scaled_mm", True) else ", no FP8 _scaled_mm") + ")")
    else:
        machine = env.get("rehearsal") and f"no GPU: {env['rehearsal']}" or "unknown machine"
    failed = summary["failed_steps"]
    title = summary["verdict"] + (f" ({len(failed)} of {len(summary['steps'])} steps: "
                                  f"{', '.join(failed)})" if failed else "")
    lines = [f"# loadcheck GPU check: {title}", "",
             f"{machine}; torch {env.get('torch')}, CUDA {env.get('cuda')}"
             + (f", cuDNN {env['cudnn']}" if env.get("cudnn") else "")
             + f"; Python {env.get('python')}; device {summary['device']}",
             f"Total wall time {summary['wall_s']} s (step budgets {summary['budget_s']} s)."]
    lines += [f"Note: {n}." for n in env.get("notes", [])]
    lines += ["", "| step | result | wall / budget | passed | failed | skipped |",
              "|---|---|---|---|---|---|"]
    for s in summary["steps"]:
        result = "TIMED OUT" if s["timed_out"] else "ok" if s["ok"] else f"exit {s['returncode']}"
        c = s["counts"]
        lines.append(f"| {s['name']} | {result} | {s['wall_s']:.0f} / {s['budget_s']} s | "
                     f"{c['passed']} | {c['failed'] + c['error']} | {c['skipped']} |")
    lines += ["", "## FP8 on CUDA against the CPU reference", *_fp8_lines(summary),
              "", "## Host → device copies", *_copy_lines(summary),
              "", "## Tests" + ("" if every_test else " that did not pass (every test: "
                                 "SUMMARY.md)"),
              "", "| step | test | outcome | s | note |", "|---|---|---|---|---|"]
    for s in summary["steps"]:
        shown = s["tests"] if every_test else [t for t in s["tests"] if t["outcome"] != "passed"]
        for t in sorted(shown, key=lambda t: t["outcome"] == "passed"):
            time = f"{t['time']:.1f}" if t["time"] is not None else "-"
            outcome = t["outcome"] if t["outcome"] in ("passed", "skipped") else \
                f"**{t['outcome']}**"
            lines.append(f"| {s['name']} | {t['test']} | {outcome} | {time} | "
                         f"{t['note'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path) -> dict[str, Any]:
    """SUMMARY.md and summary.json in `out`; the summary."""
    summary = build_summary(Path(out))
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (Path(out) / "SUMMARY.md").write_text(render(summary), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m conformance.gpu_summary GPU_CHECK_DIR", file=sys.stderr)
        return 2
    summary = write_summary(Path(args[0]))
    print(render(summary, every_test=False))
    return 1 if summary["failed_steps"] else 0


if __name__ == "__main__":
    sys.exit(main())
