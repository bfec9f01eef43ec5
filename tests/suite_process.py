"""Run `python -m pytest ARGS` as if in a fresh process, without paying a fresh start-up.

The project's tests start about a hundred suite runs (a mutant, a baseline, a fault each).
A fresh Python spends most of a short run importing torch, Hypothesis and pytest. A
*zygote* imports them once, then forks one child per run. The child takes the run's
working directory, environment, import path and output files, and calls `pytest.main`.
So each run is still its own process, with its own plugins, records and exit status. It
only starts with those libraries already imported. The project's own modules
(`conformance`, `reference`, `generators`) are never imported in the zygote. Some of them
read the environment when imported, so the child imports them under its own environment,
as a fresh process would.

`run_pytest` falls back to a plain subprocess where fork is missing (not POSIX), and when
LOADCHECK_FRESH_PROCESS=1 asks for one (to rule the zygote out when a test behaves oddly).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PytestRun", "run_pytest"]

# imported once in the zygote: what every suite run needs and nothing configures at import.
# Not pytest plugins (hypothesis, xdist): pytest could not rewrite their asserts (a warning
# in every run), and xdist.plugin freezes sys.path when imported, so its workers would get
# the zygote's import path instead of the run's.
PRELOADED = ("torch", "safetensors.torch", "numpy", "pytest", "_pytest.python",
             "_pytest.terminal", "jinja2")


@dataclass
class PytestRun:
    returncode: int
    stdout: str
    stderr: str


def run_pytest(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> PytestRun:
    """`python -m pytest *args` in `cwd` under `env` (PYTHONPATH included), as a child of
    the zygote; a run past `timeout` seconds is killed with its process group and raises
    subprocess.TimeoutExpired like subprocess.run."""
    if not hasattr(os, "fork") or os.environ.get("LOADCHECK_FRESH_PROCESS") == "1":
        proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        return PytestRun(proc.returncode, proc.stdout, proc.stderr)
    return _zygote().run(args, cwd, env, timeout)


class _Zygote:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.suite_process"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=Path(__file__).resolve().parent.parent, text=True)
        atexit.register(self.close)

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> PytestRun:
        with self.lock, tempfile.TemporaryDirectory(prefix="loadcheck-run-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out),
                       "stderr": str(err), "timeout": timeout}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline()
            if not reply:
                raise RuntimeError("the suite's zygote process died: run with "
                                   "LOADCHECK_FRESH_PROCESS=1 to bypass it")
            result = json.loads(reply)
            stdout = out.read_text(errors="replace") if out.exists() else ""
            stderr = err.read_text(errors="replace") if err.exists() else ""
            if result["timed_out"]:
                raise subprocess.TimeoutExpired(["pytest", *args], timeout, stdout, stderr)
            return PytestRun(result["returncode"], stdout, stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_ZYGOTE: _Zygote | None = None


def _zygote() -> _Zygote:
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = _Zygote()
    return _ZYGOTE


# ---- inside the zygote --------------------------------------------------------------------

def _child(request: dict) -> None:
    """The forked run: become a fresh `python -m pytest` in the request's place, never return."""
    try:
        os.setpgid(0, 0)  # its own group, so a timeout kills the run and its workers together
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # what a fresh interpreter puts first on sys.path: `-m` adds the working directory,
        # PYTHONPATH comes next; the rest (stdlib, site-packages) is the same interpreter's
        python_path = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *python_path] + [p for p in sys.path[1:]
                                                        if p not in python_path]
        sys.argv = ["pytest", *request["args"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import pytest
        code = pytest.main(request["args"])
        atexit._run_exitfuncs()  # what a fresh interpreter runs at exit: the run's and the libraries'
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    except BaseException:  # noqa: BLE001 - a child must never return into the zygote's loop
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(70)


def _serve() -> None:
    for name in PRELOADED:
        try:
            __import__(name)
        except ImportError:  # an optional one absent: the child imports what it needs
            pass
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        timed_out, status = _wait(pid, request["timeout"])
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                          "timed_out": timed_out}), flush=True)


def _wait(pid: int, timeout: float) -> tuple[bool, int]:
    """Wait for the run; past `timeout`, kill its whole process group (xdist workers too).
    A run that ends leaves its group alone, as subprocess.run would: what it left running is
    for the tests to find."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False, status
        if time.monotonic() > deadline:
            _kill_group(pid)
            return True, os.waitpid(pid, 0)[1]
        time.sleep(0.02)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    _serve()
