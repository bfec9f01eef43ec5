"""A candidate cannot change what it is judged by (in process, as far as that is feasible).

- **Its checkpoint**: the reference's expected result is private memory (the session's
  reference copies instead of mapping files, conformance/session.py), so a candidate that
  writes into or truncates its checkpoint changes nothing the suite compares against; the
  write itself is a `critical` divergence (`CheckpointFingerprint`).
- **Process-wide state**: the working directory and torch's default dtype and device are
  checked around every candidate call, restored, and a change is a divergence. The RNG
  states (torch, Python) are restored without a report: drawing random numbers (random
  initialisation before loading) is no bug, but it must not change later examples.
- **The judge**: the functions and classes of the suite's and the reference's modules are
  snapshotted once; a candidate call that rebinds one (`conformance.compare.compare_tensor
  = ...`, a patched `__code__`) is a `critical` divergence, and the original is put back.
  What this cannot see: a patch of torch or of the standard library the comparison uses,
  or of an object reached through the garbage collector. In one process a candidate has the
  interpreter; `--isolate` is the containment (the judge then lives in another process).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .compare import Divergence

__all__ = ["CheckpointFingerprint", "guarded_call", "JudgeSnapshot"]

_JUDGE_PACKAGES = ("conformance", "reference", "generators")


class CheckpointFingerprint:
    """Each existing file of a checkpoint directory: its type, size and content hash (the
    suite's checkpoints are kilobytes; files above `limit` are compared by size and mtime)."""

    def __init__(self, directory: Path, limit: int = 64 * 2**20):
        self.directory, self.limit = Path(directory), limit
        self.files = self._take()

    def _take(self) -> dict[str, tuple]:
        out = {}
        for root, _, names in os.walk(self.directory):
            for name in names:
                path = Path(root) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                digest = None
                if path.is_file() and not path.is_symlink() and st.st_size <= self.limit:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path.relative_to(self.directory))] = (
                    st.st_mode, st.st_size, digest, st.st_mtime_ns if digest is None else 0)
        return out

    def changes(self) -> list[str]:
        """What happened to the files that were there (a new file is tolerated: the
        README's contract asks loaders to cache elsewhere, but does not fail them)."""
        now, out = self._take(), []
        for name, (mode, size, digest, mtime) in sorted(self.files.items()):
            if name not in now:
                out.append(f"{name} was removed")
            elif now[name][1] != size:
                out.append(f"{name} changed size ({size} -> {now[name][1]} bytes)")
            elif now[name] != (mode, size, digest, mtime):
                out.append(f"{name} was rewritten (its bytes or type changed)")
        return out

    def divergences(self) -> list[Divergence]:
        changes = self.changes()
        if not changes:
            return []
        return [Divergence("checkpoint", changes[0].split(" ")[0], "[critical] the candidate "
                           f"wrote into its checkpoint: {'; '.join(changes[:5])}. A loader "
                           "must never write into a user's checkpoint (the expected result "
                           "was computed before, from private memory)",
                           {"changes": changes}, "critical")]


class JudgeSnapshot:
    """The module-level functions and classes of the suite and the reference, the methods
    of those classes (and each function's code), taken once; `restore` puts back whatever a
    candidate rebound (`ReferenceLoader.map_key = ...` as much as `compare_tensor = ...`)."""

    def __init__(self) -> None:
        # module name -> [(attribute, value, the function holding its code, that code)]
        self.bindings: dict[str, list[tuple[str, object, object, object]]] = {}
        # class -> [(attribute, value in the class's own dict, its function, its code)]
        self.methods: dict[type, list[tuple[str, object, object, object]]] = {}
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in _JUDGE_PACKAGES:
                continue
            for attr, value in list(vars(module).items()):
                if callable(value) and _judges(value):
                    self.bindings.setdefault(name, []).append(
                        (attr, value, _function(value), _code(value)))
                    if isinstance(value, type) and value.__module__ == name:
                        self.methods[value] = [
                            (method, member, _function(member), _code(member))
                            for method, member in list(vars(value).items())
                            if _code(member) is not None]

    def restore(self) -> list[str]:
        """The names a candidate changed, each put back as it was. It runs around every
        candidate call (about 700 names), so the loop compares identities and nothing more."""
        changed = []
        for module_name, entries in self.bindings.items():
            module = sys.modules.get(module_name)
            if module is None:
                continue
            namespace = vars(module)
            for attr, value, function, code in entries:
                if namespace.get(attr) is not value:
                    setattr(module, attr, value)
                    changed.append(f"{module_name}.{attr}")
                elif code is not None and getattr(function, "__code__", None) is not code:
                    function.__code__ = code
                    changed.append(f"{module_name}.{attr}.__code__")
        for cls, entries in self.methods.items():
            namespace = vars(cls)
            for method, value, function, code in entries:
                if namespace.get(method) is not value:
                    setattr(cls, method, value)
                    changed.append(f"{cls.__module__}.{cls.__qualname__}.{method}")
                elif function.__code__ is not code:
                    function.__code__ = code
                    changed.append(f"{cls.__module__}.{cls.__qualname__}.{method}.__code__")
        return changed


def _judges(value: object) -> bool:
    return getattr(value, "__module__", "").split(".")[0] in _JUDGE_PACKAGES


def _function(member: object) -> object:
    """The function inside a class member (a staticmethod, classmethod or property wraps one)."""
    if isinstance(member, property):
        return member.fget
    return getattr(member, "__func__", member)


def _code(member: object) -> object:
    return getattr(_function(member), "__code__", None)


class _Unclosable:
    """sys.stdout / sys.stderr during a candidate call: closing it is noted, not done (a
    closed capture stream would fail every later test of the process)."""

    def __init__(self, stream):
        self._stream, self.closed_by_candidate = stream, False

    def close(self) -> None:
        self.closed_by_candidate = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _children() -> set[int]:
    """This process's child processes (Linux: /proc/self/task/*/children); empty elsewhere."""
    out: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                out.update(int(pid) for pid in f.read().split())
    except OSError:
        pass
    return out


def _default_device() -> str:
    return str(torch.get_default_device()) if hasattr(torch, "get_default_device") else "cpu"


@contextmanager
def guarded_call(judge: JudgeSnapshot | None, in_process: bool = True
                 ) -> Iterator[list[Divergence]]:
    """Around one candidate call: the divergences its side effects amount to, filled in
    when the call returns (each effect undone, except child processes it left running:
    in process they are reported, not killed; --isolate kills them)."""
    children = _children() if in_process else set()
    cwd, dtype, device = os.getcwd(), torch.get_default_dtype(), _default_device()
    torch_rng, python_rng = torch.get_rng_state(), random.getstate()
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}
    guards = {name: _Unclosable(stream) for name, stream in streams.items()}
    sys.stdout, sys.stderr = guards["stdout"], guards["stderr"]
    found: list[Divergence] = []
    try:
        yield found
    finally:
        sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
        for name, guard in guards.items():
            if guard.closed_by_candidate:
                found.append(Divergence("global_state", f"sys.{name}", f"the candidate "
                                        f"closed sys.{name} (not done: later output and "
                                        f"tests need it)", {"found": "closed"}))
        try:
            now = os.getcwd()
        except OSError:  # the candidate removed the directory it moved into
            now = "(a removed directory)"
        if now != cwd:
            os.chdir(cwd)
            found.append(Divergence("global_state", "working directory", f"the candidate "
                                    f"changed the working directory ({cwd} -> {now}); "
                                    f"restored", {"expected": cwd, "found": now}))
        if torch.get_default_dtype() != dtype:
            changed = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            found.append(Divergence("global_state", "default dtype", f"the candidate left "
                                    f"torch's default dtype at {changed} (was {dtype}); "
                                    f"restored", {"expected": str(dtype), "found": str(changed)}))
        if _default_device() != device:
            changed_device = _default_device()
            torch.set_default_device(device)
            found.append(Divergence("global_state", "default device", f"the candidate left "
                                    f"torch's default device at {changed_device} (was {device});"
                                    f" restored", {"expected": device, "found": changed_device}))
        left = sorted(_children() - children) if in_process else []
        if left:
            found.append(Divergence("process", "child processes", f"the candidate left "
                                    f"{len(left)} child process(es) running after the call "
                                    f"(pids {', '.join(map(str, left[:5]))}): a loader's "
                                    f"helpers must end with it (--isolate kills them)",
                                    {"found": left}))
        torch.set_rng_state(torch_rng)
        random.setstate(python_rng)
        for name in judge.restore() if judge is not None else []:
            found.append(Divergence("judge", name, f"[critical] the candidate rebound {name}, "
                                    f"a function the suite judges with; restored (run with "
                                    f"--isolate to keep the judge out of its reach)",
                                    {"found": name}, "critical"))
