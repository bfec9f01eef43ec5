"""`./run gpu-check` (`python -m conformance.gpu_check`): everything CUDA in loadcheck, in
one prepared command for the few minutes a GPU is lent.

It runs under the Python that starts it, with the packages already there (a GPU machine
has no network: nothing is installed), checks every import up front and names what is
missing, and on a machine without CUDA says so in one line and exits 3. Then each step runs
in its own process group under its own time budget: a step that overruns is interrupted
(SIGINT, so pytest still writes what it has), killed after a grace period, reported, and
the next step runs. The sum of the budgets bounds the whole check.

Everything lands under one folder (`--out`, else LOADCHECK_GPU_OUT, else results/gpu-check):
`environment.json`, `check.json` (the steps as they finish), `logs/<step>.log`,
`records/<step>/`, `junit/<step>.xml`, `outcomes/<step>.jsonl` (each test's outcome as it
finishes: conformance/outcome_log.py), `bench/offload_copy.json`, `report.html`, and the
one-page `SUMMARY.md` with its `summary.json` (conformance/gpu_summary.py).
`--dry-run` prints every step's command and budget, and checks the imports, for free.
`--device cpu` rehearses every step on the CPU (no CUDA figures).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["REQUIRED", "OPTIONAL", "Step", "missing_dependencies", "mutants_on_device",
           "plan", "run_step", "main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = "results/gpu-check"
GRACE_S = 10  # after SIGINT, before SIGKILL: pytest writes its JUnit XML and summary

# import name -> what to install. transformers / accelerate are not needed: the check
# runs the reference loader and the project's mutants.
REQUIRED = {"torch": "torch", "hypothesis": "hypothesis", "pytest": "pytest",
            "safetensors": "safetensors", "numpy": "numpy", "jinja2": "jinja2"}
# import name -> (what to install, what the check does without it)
OPTIONAL = {
    "xdist": ("pytest-xdist", "every step runs in one process (slower; budgets may not suffice)"),
    "pytest_benchmark": ("pytest-benchmark", "the offload copies are timed directly "
                         "(python -m benchmarks.offload_copy)"),
}

# The conformance modules that get a step (and budget) of their own; the conformance step
# runs every other module.
OWN_STEPS = {"fp8_cuda": "conformance/test_fp8_cuda.py", "offload": "conformance/test_offload.py"}
# Mutants whose bug lives on a CUDA path: the offloader (side stream, events, pinned host
# copies), FP8 quantization and reload, and the post-load device move.
CUDA_MUTANT_PROPERTIES = ("test_offload.py", "test_fp8.py", "test_fp8_stateful.py",
                          "test_reload.py")
DEVICE_MOVE_MUTANTS = ("seed000_meta_move_before_load", "seed000_move_casts_dtype")

# Seconds per step, for one H200 with 16 cores and 8 workers. Not yet measured on a GPU:
# sized from a CPU rehearsal (2 busy cores, 2 workers: conformance 248 s, its tests 405 s in
# all, the longest 33 s; offload 33 s; a mutant about 50 s), with CUDA start-up per process.
BUDGETS = {"conformance": 180, "fp8_cuda": 60, "offload": 50, "mutants": 120,
           "offload_copy": 40, "report": 20}


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    argv: tuple[str, ...]
    budget_s: int
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (prefix + " " if prefix else "") + " ".join(shlex.quote(a) for a in self.argv)


# ----- preflight -------------------------------------------------------------------------
def missing_dependencies(modules: dict[str, str], import_them: bool = True) -> list[str]:
    """One phrase per module that cannot be imported: the module, what to install, why."""
    missing = []
    for module, package in modules.items():
        try:
            if import_them:
                importlib.import_module(module)
            elif importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}")
        except Exception as exc:  # a broken install is as missing as an absent one
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            missing.append(f"{module} (install {package}; {reason})")
    return missing


def cuda_environment(device: str) -> dict:
    """The GPU, torch and CUDA as this process sees them, or {'error': ...} when `device`
    cannot be used (no CUDA build, no device, or a first allocation that fails)."""
    import torch
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "python": sys.version.split()[0], "device": device}
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return {**env, "error": f"no CUDA device on this machine (torch {torch.__version__}, "
                                f"{build})"}
    try:
        torch.zeros(1, device=device).add_(1)
        torch.cuda.synchronize(device)
    except Exception as exc:
        return {**env, "error": f"CUDA is present but {device} does not work: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    capability = torch.cuda.get_device_capability(index)
    return {**env, "gpu": props.name, "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"sm_{capability[0]}{capability[1]}",
            "cudnn": torch.backends.cudnn.version(),
            # _scaled_mm's FP8 kernels need Ada (sm_89) or newer
            "fp8_scaled_mm": hasattr(torch, "_scaled_mm") and capability >= (8, 9),
            "driver": _driver_version()}


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def package_versions() -> dict[str, str | None]:
    from importlib import metadata
    out = {}
    for name in ("torch", "hypothesis", "pytest", "pytest-xdist", "pytest-benchmark",
                 "safetensors", "numpy", "jinja2", "transformers", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ----- the plan --------------------------------------------------------------------------
def mutants_on_device() -> list[str]:
    """The project's mutants whose bug lives on a CUDA path, in tests/mutants' order."""
    from tests.mutants import MUTANTS
    chosen = []
    for name in MUTANTS:
        catch = importlib.import_module(f"tests.mutants.{name}").CATCH
        if catch.test.split("::")[0] in CUDA_MUTANT_PROPERTIES or name in DEVICE_MOVE_MUTANTS:
            chosen.append(name)
    return chosen


def plan(out: Path, *, device: str, python: str, workers: int, xdist: bool, benchmark: bool,
         mutants: list[str]) -> list[Step]:
    """Every step, in order, with its command and budget."""
    records, junit = out / "records", out / "junit"

    def pytest(name: str, *selection: str, parallel: int = 1) -> tuple[str, ...]:
        argv = [python, "-m", "pytest", *selection, "-p", "no:cacheprovider", "-q", "-rfE",
                f"--junitxml={junit / (name + '.xml')}", "-p", "conformance.outcome_log",
                f"--outcome-log={out / 'outcomes' / (name + '.jsonl')}"]
        if xdist and parallel > 1:
            argv += ["-n", str(parallel), "--dist", "worksteal"]
        return tuple(argv)

    def suite(name: str) -> tuple[str, ...]:
        return ("--loader", "reference", f"--device={device}", "--hypothesis-profile=pr",
                f"--records={records / name}")

    rest = [f"--ignore={path}" for path in OWN_STEPS.values()]
    steps = [
        Step("conformance", "pytest conformance --loader reference (pr profile), except the "
             "two modules below", pytest("conformance", "conformance", *rest,
                                          parallel=workers) + suite("conformance"),
             BUDGETS["conformance"]),
        Step("fp8_cuda", "FP8 on CUDA: GPU codes vs the CPU reference, torch._scaled_mm vs "
             "the dequantized matmul", pytest("fp8_cuda", OWN_STEPS["fp8_cuda"], parallel=2)
             + suite("fp8_cuda"), BUDGETS["fp8_cuda"]),
        Step("offload", "P9 offload: side stream, events, pinned host copies",
             pytest("offload", OWN_STEPS["offload"]) + suite("offload"), BUDGETS["offload"]),
    ]
    if mutants:  # none named would run every test of tests/
        steps.append(Step(
            "mutants", f"{len(mutants)} mutants of CUDA paths (offload, FP8, reload, device "
            f"move), each caught on {device}",
            # each xdist worker mostly waits on its mutant's own pytest process: two per
            # worker's core, each single-threaded (tiny cases, like conftest's workers)
            pytest("mutants", *(f"tests/test_mutants.py::test_mutant_is_caught[{m}]"
                                for m in mutants), parallel=min(2 * workers, len(mutants))),
            BUDGETS["mutants"], {"LOADCHECK_MUTANT_DEVICE": device, "OMP_NUM_THREADS": "1"}))
    bench_json = out / "bench" / "offload_copy.json"
    if benchmark:
        bench = pytest("offload_copy", "benchmarks/test_offload_copy.py") + (
            f"--benchmark-json={bench_json}", "--benchmark-columns=min,median")
    else:
        bench = (python, "-m", "benchmarks.offload_copy", "--json", str(bench_json))
    steps.append(Step("offload_copy", "offload copy benchmark: offloader onload vs raw pinned "
                      "copy_" + ("" if benchmark else " (timed directly: no pytest-benchmark)"),
                      bench, BUDGETS["offload_copy"]))
    steps.append(Step("report", "the HTML report of every step's records",
                      (python, "-m", "reports", "build", str(records), "-o",
                       str(out / "report.html")), BUDGETS["report"]))
    return steps


# ----- running ---------------------------------------------------------------------------
def run_step(step: Step, log: Path, env: dict[str, str]) -> dict:
    """Run one step in its own process group under its budget; what happened."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    timed_out = False
    with open(log, "w", encoding="utf-8") as out:
        out.write(f"$ {step.shell()}\n")
        out.flush()
        proc = subprocess.Popen(step.argv, cwd=ROOT, env={**env, **step.env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=step.budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = _interrupt(proc)
    return {"name": step.name, "what": step.what, "command": step.shell(),
            "budget_s": step.budget_s, "wall_s": round(time.monotonic() - start, 1),
            "returncode": returncode, "timed_out": timed_out, "log": str(log)}


def _interrupt(proc: subprocess.Popen) -> int:
    """SIGINT to the step's own process (a plain pytest then still writes its JUnit XML;
    xdist's controller may not, hence the outcome log), SIGKILL to its whole group after
    the grace period (xdist workers and the mutants' nested runs included)."""
    try:
        os.kill(proc.pid, signal.SIGINT)
        returncode = proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        returncode = None
    except ProcessLookupError:
        returncode = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait() if returncode is None else returncode


_OURS = {"environment.json", "check.json", "logs", "records", "junit", "outcomes", "bench",
         "report.html", "SUMMARY.md", "summary.json"}


def _prepare(out: Path) -> str | None:
    """An empty (or earlier gpu-check's) folder, cleared of an earlier check's files; or why not."""
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OURS)
        if foreign:
            return (f"--out {out} holds files of something else ({', '.join(foreign[:3])}): "
                    f"give an empty or new folder")
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return None


def _step_env(without_benchmark: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.pop("PYTEST_XDIST_WORKER", None)
    if without_benchmark:
        # pyproject's filterwarnings names pytest_benchmark's warning class; without the
        # plugin an older pytest refuses the whole configuration. Nested runs (the mutants')
        # read PYTEST_ADDOPTS too.
        env["PYTEST_ADDOPTS"] = (env.get("PYTEST_ADDOPTS", "") + " -o filterwarnings=default").strip()
    return env


def _select(steps: list[Step], only: str | None, skip: str | None, scale: float) -> list[Step]:
    wanted = {n for n in (only or "").split(",") if n}
    unwanted = {n for n in (skip or "").split(",") if n}
    return [replace(s, budget_s=max(1, round(s.budget_s * scale))) for s in steps
            if (not wanted or s.name in wanted) and s.name not in unwanted]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./run gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("LOADCHECK_GPU_OUT") or DEFAULT_OUT,
                        help="the one folder everything is written to (LOADCHECK_GPU_OUT; "
                             f"default {DEFAULT_OUT})")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default), cuda:N, or cpu to rehearse every step on the CPU")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="xdist workers of the conformance and mutant steps "
                             "(default: min(8, cores))")
    parser.add_argument("--only", help="comma-separated steps to run (a rerun of what failed)")
    parser.add_argument("--skip", help="comma-separated steps to leave out")
    parser.add_argument("--budget-scale", type=float, default=1.0, metavar="F",
                        help="multiply every step's budget by F (a rehearsal on a slow CPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (every command and budget) and the import check")
    args = parser.parse_args(argv)
    for option in (args.only, args.skip):
        unknown = sorted(set(filter(None, (option or "").split(","))) - set(BUDGETS))
        if unknown:
            parser.error(f"unknown step(s) {', '.join(unknown)}: the steps are "
                         f"{', '.join(BUDGETS)}")
    return args


def _machine(device: str) -> dict:
    """What this check runs on: the GPU (cuda_environment), or a CPU rehearsal's torch."""
    if device != "cpu":
        return cuda_environment(device)
    import torch
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu",
            "python": sys.version.split()[0], "rehearsal": "every step on the CPU: no CUDA figures"}


def _steps(args: argparse.Namespace, out: Path, lacking: set[str]) -> tuple[list[Step], list[str]]:
    """The selected steps, and notes on what runs differently from the full plan."""
    notes = [f"{OPTIONAL[m][0]} is not installed: {OPTIONAL[m][1]}" for m in sorted(lacking)]
    try:
        mutants = mutants_on_device()
    except ImportError as exc:  # a dry run without torch still shows the rest of the plan
        mutants = []
        notes.append(f"the mutants cannot be listed ({exc}): no mutants step")
    steps = plan(out, device=args.device, python=sys.executable, workers=args.workers,
                 xdist="xdist" not in lacking, benchmark="pytest_benchmark" not in lacking,
                 mutants=mutants)
    return _select(steps, args.only, args.skip, args.budget_scale), notes


def _print_plan(steps: list[Step], notes: list[str], missing: list[str], out: Path) -> None:
    for line in missing:
        print(f"missing: {line}")
    for line in notes:
        print(f"note: {line}")
    print(f"plan: {len(steps)} steps, at most {sum(s.budget_s for s in steps)} s of budgets "
          f"(+{GRACE_S} s grace per overrun step), everything under {out}")
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step.name} (budget {step.budget_s} s): {step.what}\n"
              f"    {step.shell()}")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.monotonic()
    out = Path(args.out).resolve()
    missing = missing_dependencies(REQUIRED, import_them=not args.dry_run)
    if missing and not args.dry_run:
        print(f"gpu-check: missing dependenc{'y' if len(missing) == 1 else 'ies'}: "
              f"{'; '.join(missing)}; nothing was run ({sys.executable})", file=sys.stderr)
        return 2
    environment = {} if args.dry_run else _machine(args.device)
    if environment.get("error"):
        print(f"gpu-check: {environment['error']}: nothing was run", file=sys.stderr)
        return 3
    lacking = {m for m in OPTIONAL if missing_dependencies({m: OPTIONAL[m][0]}, not args.dry_run)}
    steps, notes = _steps(args, out, lacking)
    if args.dry_run:
        _print_plan(steps, notes, missing, out)
        return 2 if missing else 0
    problem = _prepare(out)
    if problem:
        print(f"gpu-check: {problem}", file=sys.stderr)
        return 2
    environment.update(packages=package_versions(), notes=notes, workers=args.workers,
                       executable=sys.executable)
    (out / "environment.json").write_text(json.dumps(environment, indent=2))
    print(f"gpu-check: {environment.get('gpu', 'no GPU (rehearsal on the CPU)')}; torch "
          f"{environment['torch']}, CUDA {environment.get('cuda')}; {len(steps)} steps, at most "
          f"{sum(s.budget_s for s in steps)} s; everything under {out}", flush=True)
    for line in notes:
        print(f"gpu-check: note: {line}", flush=True)
    return _run_all(steps, out, args.device, _step_env("pytest_benchmark" in lacking), started)


def _run_all(steps: list[Step], out: Path, device: str, env: dict[str, str],
             started: float) -> int:
    from .gpu_summary import render, write_summary
    done: list[dict] = []
    for number, step in enumerate(steps, 1):
        result = run_step(step, out / "logs" / f"{step.name}.log", env)
        done.append(result)
        _write_check(out, started, device, done)
        verdict = ("TIMED OUT" if result["timed_out"] else "passed" if result["returncode"] == 0
                   else f"FAILED (exit {result['returncode']})")
        print(f"[{number}/{len(steps)}] {step.name}: {verdict} in {result['wall_s']:.0f} s "
              f"(budget {step.budget_s} s); log {result['log']}", flush=True)
    _write_check(out, started, device, done)
    summary = write_summary(out)
    print()
    print(render(summary, every_test=False))
    return 1 if summary["failed_steps"] else 0


def _write_check(out: Path, started: float, device: str, steps: list[dict]) -> None:
    check = {"device": device, "wall_s": round(time.monotonic() - started, 1), "steps": steps}
    (out / "check.json").write_text(json.dumps(check, indent=2))


if __name__ == "__main__":
    sys.exit(main())
