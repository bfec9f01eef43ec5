"""Surviving the candidate: a hang costs one example a timeout, a crash costs one example.

In process, a candidate call runs in a daemon thread joined with a timeout (enough for a
loader that waits or loops in Python; one stuck in C holding the GIL needs isolation).
With `--isolate`, candidate calls go to a persistent child process that imports the
candidate once and, on CPU, forks per call: a call that crashes (segfault, abort,
os._exit) or outlives its timeout (then killed) costs one fork. With CUDA, which does not
survive a fork, calls run in the child itself, which is restarted after it dies. Results come back as
safetensors files and JSON, read by the reference's own validated reader: nothing crosses
the process boundary as a pickle.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from reference.checkpoint import Checkpoint, open_regular, read_header, write_safetensors
from reference.contract import ERROR_FAMILIES, LoadError, LoadOptions, LoadResult, ModelSpec

__all__ = ["CandidateHung", "CandidateCrashed", "CandidateContractError", "HungTestStopped",
           "HangBudget", "call_with_timeout",
           "checked_result", "aborted_message",
           "IsolatedLoader"]


class CandidateHung(Exception):
    """The candidate did not return within the timeout."""


class HungTestStopped(BaseException):
    """Stops a test after its candidate hung once. A BaseException, so Hypothesis does not
    take it for a failure to shrink (each replay would cost a timeout) and lets it out."""


class HangBudget:
    """The tests in which the candidate hung, counted over the whole run: every xdist worker
    appends to one file (under a lock), so `--max-hung-tests N` costs N timeouts per run, not
    per worker. `limit` 0: no budget."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = Path(path), limit

    def add(self, test: str) -> None:
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(test.replace("\n", " ") + "\n")

    def hung(self) -> list[str]:
        import fcntl
        try:
            with open(self.path, encoding="utf-8") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                return sorted(set(f.read().splitlines()))
        except FileNotFoundError:
            return []

    def exhausted(self) -> bool:
        return bool(self.limit) and len(self.hung()) >= self.limit


class CandidateCrashed(Exception):
    """The candidate's process died (a signal or an exit) during a call."""


def call_with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """fn() in a daemon thread; CandidateHung if it has not returned after `timeout` s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller as it is
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="loadcheck-candidate")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CandidateHung(f"no answer within {timeout:g} s, the --candidate-timeout in "
                            f"force (the call is abandoned; run with --isolate to kill such "
                            f"calls); the test's remaining examples are skipped")
    if "error" in box:
        error = box["error"]
        if not isinstance(error, Exception):
            # KeyboardInterrupt, SystemExit, GeneratorExit raised by the candidate itself (a
            # user's Ctrl-C reaches the main thread, not this one): it would end a real
            # caller's process, and here it must not end the run.
            raise CandidateCrashed(aborted_message(error)) from error
        raise error
    return box["value"]


class CandidateContractError(TypeError):
    """The candidate returned a LoadResult that breaks the contract's types."""


def checked_result(value: Any) -> Any:
    """`value` as it is, unless it is a LoadResult whose state or buffers hold something
    other than materialised tensors: then the candidate raised CandidateContractError, so
    the comparison never meets a list, None or a meta tensor where bits belong."""
    import torch
    if isinstance(value, LoadResult):
        for what in ("state", "buffers"):
            tensors = getattr(value, what)
            if not hasattr(tensors, "items"):
                raise CandidateContractError(f"LoadResult.{what} is a {type(tensors).__name__}"
                                             f", not a mapping of names to tensors")
            for name, tensor in tensors.items():
                if not isinstance(tensor, torch.Tensor):
                    raise CandidateContractError(
                        f"LoadResult.{what}[{name!r}] is a {type(tensor).__name__}, not a "
                        f"torch.Tensor")
                if tensor.is_meta:
                    raise CandidateContractError(
                        f"LoadResult.{what}[{name!r}] is on the meta device: it holds no "
                        f"values (never materialised)")
    return value


def aborted_message(error: BaseException) -> str:
    return (f"the candidate raised {type(error).__name__}({str(error)!r}) during the call: "
            f"not an Exception, so it ends the process of whoever calls the loader")


# ----- the child -------------------------------------------------------------------------
def _answer_load(loader: Any, request: dict[str, Any]) -> dict[str, Any]:
    out = Path(request["out"])
    try:
        result = loader.load(request["checkpoint"], ModelSpec.from_dict(request["spec"]),
                             LoadOptions(**request["options"]))
        _write_result(result, out)
        return {"ok": True}
    except LoadError as exc:
        return {"error": {"family": exc.family, "message": str(exc), "subject": exc.subject,
                          "alternatives": sorted(exc.alternatives)}}
    except Exception as exc:
        return {"error": {"family": None, "type": type(exc).__name__, "message": str(exc)}}
    except BaseException as exc:  # KeyboardInterrupt, SystemExit, GeneratorExit
        return {"crash": aborted_message(exc)}


def _forked_call(loader: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Run one call in a forked process (the candidate is imported once, in the server):
    a crash or a hang costs one fork, not a fresh interpreter."""
    answer_path = Path(request["out"] + ".json")
    memory = request.get("memory_mb")
    pid = os.fork()
    if pid == 0:  # the call's own process, and the leader of its own process group
        code = 0
        try:
            os.setpgid(0, 0)
            if memory:
                _limit_memory(memory)
            answer_path.write_text(json.dumps(_answer_load(loader, request)))
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: whichever runs first, the group exists
    except OSError:
        pass
    deadline = time.monotonic() + request["timeout"]
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"hang": f"no answer within {request['timeout']:g} s, the "
                                f"--candidate-timeout in force; the call's process was killed;"
                                f" the test's remaining examples are skipped"}
            time.sleep(0.002)
    finally:
        _kill_group(pid)  # whatever the call started and left running dies with it
        _kill_orphans()   # and what left the group (setsid), handed to this subreaper
    limit = f" (the --isolate-memory limit of {memory} MiB in force)" if memory else ""
    if os.WIFSIGNALED(status) or not answer_path.exists():
        how = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
               if os.WIFSIGNALED(status) else f"exited with status {os.WEXITSTATUS(status)}")
        return {"crash": f"the candidate's process {how} during load{limit}"}
    try:
        answer = json.loads(_read_small(answer_path))
    except (OSError, ValueError, LoadError) as exc:
        return {"crash": f"the call's answer file is unreadable: {exc}"}
    error = answer.get("error") or {}
    if memory and (error.get("type") == "MemoryError" or "allocate memory" in str(
            error.get("message", "")) or "out of memory" in str(error.get("message", ""))):
        return {"crash": f"the candidate ran out of memory{limit}: {error.get('type')}: "
                         f"{str(error.get('message'))[:300]}"}
    return answer


def _limit_memory(megabytes: int) -> None:
    """Address space for this call: what the process holds now plus `megabytes` (so the
    limit is what the call may add, whatever torch already mapped)."""
    import resource
    size = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                size = int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + megabytes * 2**20, resource.RLIM_INFINITY))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: nothing was left running


def _become_subreaper() -> bool:
    """Linux: orphaned descendants of this process (a call's grandchild that left its process
    group with setsid(), a daemon's double fork) are re-parented here instead of to init, so
    _kill_orphans can find them. False where the kernel offers no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _children() -> list[int]:
    """This process's children, from /proc (Linux; [] elsewhere)."""
    me, out = os.getpid(), []
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                out += [int(pid) for pid in f.read().split()]
        except OSError:
            continue
    return out


def _kill_orphans(rounds: int = 50) -> None:
    """Between calls the server has no child of its own: every child it has now is something
    a call left behind and the subreaper took in. Kill and reap them, again while killing
    one hands its own children over (a bounded number of rounds)."""
    for _ in range(rounds):
        children = _children()
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError, PermissionError):
                pass


def _read_small(path: Path, limit: int = 64 * 2**20) -> str:
    """A file the call's process wrote, read only if it is a regular file of sane size: a
    process it left behind may have swapped in a FIFO (a read would never return)."""
    with open_regular(path, path.name) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path.name} is {size} bytes (more than {limit})")
        return f.read(size).decode("utf-8")


def _warm_up() -> None:
    """One rich reference load in the server, before any fork: torch initialises kernels
    lazily on first use, and every fork would otherwise pay that again (~2 s a call)."""
    from generators.checkpoints import CheckpointPlan
    from generators.specs import EXTRA_DTYPES
    from reference.contract import ExtraParam
    from reference.loading import ReferenceLoader
    spec = ModelSpec(family="qwen2", attention_bias=True, tie_word_embeddings=True,
                     meta_submodule=True, dtype="bfloat16",
                     extras=tuple(ExtraParam(f"x{i}", d, (2, 3)) for i, d in
                                  enumerate(EXTRA_DTYPES)))
    with tempfile.TemporaryDirectory(prefix="loadcheck-warm-") as tmp:
        directory = CheckpointPlan(spec, shards=2, disk_dtype="float32").write(
            Path(tmp) / "checkpoint")
        for options in (LoadOptions(poison=True, meta_init=True), LoadOptions(tp_size=2)):
            result = ReferenceLoader().load(str(directory), spec, options)
            _write_result(result, Path(tmp) / "result")
            _read_result(Path(tmp) / "result")
            for name in ("state", "buffers", "result"):
                (Path(tmp) / "result" / f"{name}.{'json' if name == 'result' else 'safetensors'}"
                 ).unlink()


def _serve(loader_name: str) -> None:
    """Child main loop: one JSON request per stdin line, one JSON answer per stdout line.
    On CPU each call runs in a fork; with CUDA (which does not survive fork) in-process."""
    import torch

    from conformance.loaders import resolve
    # Cases are tiny, and an OpenMP pool's spinning threads would take the cores that the
    # xdist workers need (and a pool is not fork-safe either).
    torch.set_num_threads(1)
    _become_subreaper()
    loader = resolve(loader_name)
    _warm_up()
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the candidate's own prints must not corrupt the answer channel
    answers.write(READY + "\n")  # start-up is over: no call's timeout pays for it
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        forking = hasattr(os, "fork") and not request["options"]["device"].startswith("cuda")
        answer = _forked_call(loader, request) if forking else _answer_load(loader, request)
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def _write_result(result: LoadResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, tensors in (("state", result.state), ("buffers", result.buffers)):
        write_safetensors(out / f"{name}.safetensors",
                          [(k, t.detach().cpu().contiguous()) for k, t in tensors.items()])
    (out / "result.json").write_text(json.dumps({
        "loaded": sorted(result.loaded), "missing": sorted(result.missing),
        "unexpected": sorted(result.unexpected), "ignored": sorted(result.ignored),
        "aliases": dict(result.aliases), "placement": dict(result.placement)}))


def _read_tensors(path: Path) -> dict:
    with Checkpoint(path.parent, read_header(path)) as reader:
        return {key: reader.read(entry) for key, entry in reader.entries.items()}


def _read_result(out: Path) -> LoadResult:
    names = json.loads(_read_small(out / "result.json"))
    return LoadResult(state=_read_tensors(out / "state.safetensors"),
                      buffers=_read_tensors(out / "buffers.safetensors"),
                      loaded=frozenset(names["loaded"]), missing=frozenset(names["missing"]),
                      unexpected=frozenset(names["unexpected"]),
                      ignored=frozenset(names["ignored"]), aliases=names["aliases"],
                      placement=names["placement"])


# ----- the parent ------------------------------------------------------------------------
_GRACE = 30.0  # seconds beyond the call's timeout before the server itself is given up
# The server's start-up (interpreter, torch, the candidate's import, a warm-up load) is not a
# call: it is waited for apart, up to this long (a loaded runner takes a minute or more).
STARTUP_TIMEOUT = 600.0
READY = '{"ready": true}'


# Capabilities whose calls take the live model of an earlier load: each call forks and its
# model dies with the fork, so they are withheld under isolation (their properties skip,
# saying so) rather than offered and failed.
NEEDS_LIVE_MODEL = {"forward": "forward", "bytes": "parameter_bytes", "reload": "reload",
                    "offload": "offload", "fp8_quantize": "quantize"}


class IsolatedLoader:
    """The candidate, behind a child process: same name, version, variants, and the
    capabilities that do not need the live model across calls (`withheld`: the rest)."""

    def __init__(self, loader_name: str, candidate: Any, timeout: float,
                 memory_mb: int | None = None):
        self.loader_name, self.timeout, self.memory_mb = loader_name, timeout, memory_mb
        self.name, self.version = candidate.name, candidate.version
        self.withheld = sorted(set(candidate.capabilities) & set(NEEDS_LIVE_MODEL))
        self.capabilities = frozenset(candidate.capabilities) - set(self.withheld)
        self.variants = dict(candidate.variants)
        self.model_support = getattr(candidate, "model_support", None)
        self._child: subprocess.Popen | None = None
        self._start_failure = ""  # why the server could not start, once it could not
        self._stderr = tempfile.TemporaryFile()

    def _start(self) -> subprocess.Popen:
        """The server, started (and waited for) if it is not running. One that cannot start
        fails every later call at once, as a crash saying why."""
        if self._start_failure:
            raise CandidateCrashed(self._start_failure)
        if self._child is None or self._child.poll() is not None:
            self._stderr.seek(0)
            self._stderr.truncate()
            child = self._child = subprocess.Popen(
                [sys.executable, "-m", "conformance.survival", self.loader_name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            ready, _, _ = select.select([child.stdout], [], [], STARTUP_TIMEOUT)
            if not ready or child.stdout.readline().strip() != READY:
                child.kill()
                child.wait()
                how = ("did not finish starting (importing the candidate and one warm-up "
                       f"load) within {STARTUP_TIMEOUT:g} s" if not ready else
                       "died while starting (importing the candidate or a warm-up load)")
                self._start_failure = (f"the isolated candidate process {how}; no call of "
                                       f"this process was made{self._stderr_tail()}")
                raise CandidateCrashed(self._start_failure)
        return self._child

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        return f"; stderr: {' | '.join(tail)}" if tail else ""

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        child = self._start()
        with tempfile.TemporaryDirectory(prefix="loadcheck-isolated-") as tmp:
            request = {"checkpoint": checkpoint, "spec": spec.to_dict(),
                       "options": vars(options), "out": str(Path(tmp) / "result"),
                       "timeout": self.timeout, "memory_mb": self.memory_mb}
            try:
                child.stdin.write(json.dumps(request) + "\n")
                child.stdin.flush()
            except BrokenPipeError:
                pass  # it died at start-up; the read below reports how
            # the server enforces the timeout on a forked call; this one catches the rest
            ready, _, _ = select.select([child.stdout], [], [], self.timeout + _GRACE)
            if not ready:
                child.kill()
                child.wait()
                raise CandidateHung(f"no answer within {self.timeout:g} s, the "
                                    f"--candidate-timeout in force; the isolated candidate "
                                    f"process was killed; the test's remaining examples are "
                                    f"skipped")
            line = child.stdout.readline()
            if not line:
                code = child.wait()
                how = (f"killed by {signal.Signals(-code).name}" if code < 0
                       else f"exited with status {code}")
                raise CandidateCrashed(f"the candidate's process {how} during load"
                                       + self._stderr_tail())
            answer = json.loads(line)
            if "hang" in answer:
                raise CandidateHung(answer["hang"])
            if "crash" in answer:
                raise CandidateCrashed(answer["crash"])
            if "error" in answer:
                error = answer["error"]
                if error["family"] in ERROR_FAMILIES:
                    raise ERROR_FAMILIES[error["family"]](
                        error["message"], subject=error["subject"],
                        alternatives=frozenset(error["alternatives"]))
                raise RuntimeError(f"{error['type']}: {error['message']}")
            try:
                return _read_result(Path(request["out"]))
            except (LoadError, OSError, ValueError, KeyError) as exc:
                raise CandidateCrashed(f"the isolated call's result files are unreadable "
                                       f"(something it left behind changed them?): {exc}"
                                       ) from None


if __name__ == "__main__":
    _serve(sys.argv[1])
