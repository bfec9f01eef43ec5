"""Candidates that misbehave as processes rather than as loaders: they kill their process,
raise what is not an Exception, return what is not a result, or change what they are judged
by (their checkpoint, process-wide state, the suite's functions). Each is named on the
command line as `tests.misbehaving:<name>`; tests/test_completeness.py (and the survival
tests) prove a run against each ends with every failure recorded and never looks clean.

Each misbehaves on every load that the reference would complete (it loads first, then
misbehaves), so a test fails at its first loadable example; other calls (reload, quantize)
are the reference's."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from reference.contract import LoadResult
from reference.loading import ReferenceLoader


class _Misbehaving(ReferenceLoader):
    def __init__(self, name: str, act):
        super().__init__()
        self.name, self._act = name, act

    def load(self, checkpoint, spec, options):
        result = super().load(checkpoint, spec, options)
        return self._act(lambda: result, Path(checkpoint))


def _segfault(load, checkpoint):
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a bug in a C extension does


def _kill_itself(load, checkpoint):
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer or a watchdog would


class CandidateAbort(BaseException):
    """A BaseException of the candidate's own (some libraries define such to unwind)."""


def _raise(kind):
    def act(load, checkpoint):
        raise kind("raised by the candidate")
    return act


def _non_tensors(load, checkpoint):
    result = load()
    state = dict(result.state)
    state[next(iter(state))] = [1.0, 2.0]  # a list where a tensor belongs
    return LoadResult(**{**vars(result), "state": state})


def _meta_tensors(load, checkpoint):
    result = load()
    return LoadResult(**{**vars(result), "state": {k: v.to("meta") for k, v in
                                                    result.state.items()}})


def _none(load, checkpoint):
    return None  # not a LoadResult: the harness itself fails on it


def _data_files(checkpoint: Path) -> list[Path]:
    return sorted(checkpoint.glob("*.safetensors"))


def _write_into(load, checkpoint):
    """Overwrites the last 8 bytes of each file's data (the reference maps these files)."""
    for path in _data_files(checkpoint):
        with open(path, "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"\x7f" * 8)
    return load()


def _truncate(load, checkpoint):
    """Cuts each file in half: a reader still mapping it dies of SIGBUS on the lost pages."""
    result = load()
    for path in _data_files(checkpoint):
        os.truncate(path, path.stat().st_size // 2)
    return result


def _chdir(load, checkpoint):
    os.chdir(checkpoint.parent)
    return load()


def _default_dtype(load, checkpoint):
    torch.set_default_dtype(torch.float64)
    return load()


def _patch_judge(load, checkpoint):
    """Makes every tensor comparison agree, as a candidate could in one process."""
    import conformance.compare
    conformance.compare.compare_tensor = lambda *args, **kwargs: None
    result = load()
    return type(result)(**{**vars(result), "state": {k: torch.zeros_like(v) for k, v in
                                                      result.state.items()}})


def _reseed(load, checkpoint):
    """Seeds torch's and Python's RNG (as a loader that initialises weights "reproducibly"
    does): harmless to its own result, but later draws in the process repeat."""
    torch.manual_seed(0)
    random.seed(0)
    return load()


def _hang(load, checkpoint):
    while True:
        time.sleep(0.05)  # never returns (releasing the GIL, as a stuck read would)


# a command line no other process has, so a test can count what is left of them
GRANDCHILD = ["sleep", "86399.5"]


def _spawn(load, checkpoint):
    """Starts a helper process per call and never waits for it."""
    subprocess.Popen(GRANDCHILD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return load()


def _spawn_outside_group(load, checkpoint):
    """Starts a helper per call in a session of its own (setsid): killing the call's process
    group does not reach it."""
    subprocess.Popen(GRANDCHILD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    return load()


# Polls for the isolated call's result files and swaps a FIFO in at each (a reader of it would
# wait forever for a writer); argv: the files, then how long to keep trying.
_SWAP_IN_FIFOS = """
import os, sys, time
paths, until = sys.argv[1:-1], time.monotonic() + float(sys.argv[-1])
while paths and time.monotonic() < until:
    for path in list(paths):
        if os.path.exists(path) and not os.path.islink(path):
            try:
                os.unlink(path)
                os.mkfifo(path)
                paths.remove(path)
            except OSError:
                pass
    time.sleep(0.001)
"""


def _isolated_result_files() -> list[str]:
    """The files the isolated server will read back for this call (its request is a local of
    a caller's frame: a hostile candidate can find it); none in process."""
    frame = sys._getframe(1)
    while frame is not None:
        request = frame.f_locals.get("request")
        if isinstance(request, dict) and "out" in request:
            out = request["out"]
            return [out + ".json", os.path.join(out, "result.json"),
                    os.path.join(out, "state.safetensors")]
        frame = frame.f_back
    return []


def _swap_fifo_in(load, checkpoint):
    """Leaves a grandchild (in a session of its own) that swaps FIFOs in at the result files
    the isolated parent reads back; in process there are none and it loads as the reference."""
    targets = _isolated_result_files()
    if targets:
        subprocess.Popen([sys.executable, "-c", _SWAP_IN_FIFOS, *targets, "5"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        time.sleep(0.2)  # the helper is polling before the result is written
    return load()


def _allocate(load, checkpoint):
    """Allocates 2 GiB per call (and touches it)."""
    block = bytearray(2 * 2**30)
    block[::4096] = b"x" * len(block[::4096])
    return load()


def _close_stdout(load, checkpoint):
    import sys
    sys.stdout.close()
    return load()


class _ReadsEveryFile(ReferenceLoader):
    """Reads each file of the checkpoint whole with a plain open().read() before loading, as
    a naive reader does: blocks forever on a FIFO, reads /dev/zero until memory runs out."""

    name = "reads_every_file"

    def load(self, checkpoint, spec, options):
        for path in sorted(Path(checkpoint).iterdir()):
            if not path.is_dir():
                with open(path, "rb") as f:
                    f.read()
        return super().load(checkpoint, spec, options)


class _PatchesMapKey(ReferenceLoader):
    """Drops `model.norm.weight` from its loads by patching the reference's `map_key` (a
    method, not a module-level function) before loading: in one process the reference then
    drops it too, and every property sees two loaders agree on a missing weight."""

    name = "patches_map_key"

    def load(self, checkpoint, spec, options):
        original = ReferenceLoader.map_key
        if not getattr(original, "patched_by_candidate", False):
            def map_key(self, table, key):
                return None if key == "model.norm.weight" else original(self, table, key)
            map_key.patched_by_candidate = True
            ReferenceLoader.map_key = map_key
        return super().load(checkpoint, spec, options)


class _DtypeOnReload(ReferenceLoader):
    """Loads as the reference does; its reload leaves torch's default dtype at float64."""

    name = "sets_default_dtype_on_reload"

    def reload(self, *args, **kwargs):
        torch.set_default_dtype(torch.float64)
        return super().reload(*args, **kwargs)


class _DtypeOnSecondReload(ReferenceLoader):
    """Reloading a model it already reloaded leaves torch's default dtype at float64 and then
    raises: test_reload's last call of an example, after which no comparison runs (the
    property does not judge a second reload that raised)."""

    name = "sets_default_dtype_on_second_reload"

    def __init__(self):
        super().__init__()
        self._reloaded: list = []  # the results its reload returned (kept: ids stay unique)

    def reload(self, result, *args, **kwargs):
        if any(result is mine for mine in self._reloaded):
            torch.set_default_dtype(torch.float64)
            raise RuntimeError("a second reload is not supported")
        out = super().reload(result, *args, **kwargs)
        self._reloaded.append(out)
        return out


segfaults = _Misbehaving("segfaults", _segfault)
kills_itself = _Misbehaving("kills_itself", _kill_itself)
raises_base_exception = _Misbehaving("raises_base_exception", _raise(CandidateAbort))
patches_map_key = _PatchesMapKey()
reseeds_rng = _Misbehaving("reseeds_rng", _reseed)
swaps_fifo_in = _Misbehaving("swaps_fifo_in", _swap_fifo_in)
keyboard_interrupt = _Misbehaving("keyboard_interrupt", _raise(KeyboardInterrupt))
system_exit = _Misbehaving("system_exit", _raise(SystemExit))
generator_exit = _Misbehaving("generator_exit", _raise(GeneratorExit))
non_tensors = _Misbehaving("non_tensors", _non_tensors)
meta_tensors = _Misbehaving("meta_tensors", _meta_tensors)
returns_none = _Misbehaving("returns_none", _none)
writes_checkpoint = _Misbehaving("writes_checkpoint", _write_into)
truncates_checkpoint = _Misbehaving("truncates_checkpoint", _truncate)
changes_cwd = _Misbehaving("changes_cwd", _chdir)
sets_default_dtype = _Misbehaving("sets_default_dtype", _default_dtype)
patches_judge = _Misbehaving("patches_judge", _patch_judge)
hangs = _Misbehaving("hangs", _hang)
spawns_children = _Misbehaving("spawns_children", _spawn)
escapes_its_group = _Misbehaving("escapes_its_group", _spawn_outside_group)
allocates = _Misbehaving("allocates", _allocate)
closes_stdout = _Misbehaving("closes_stdout", _close_stdout)
reads_every_file = _ReadsEveryFile()
sets_default_dtype_on_reload = _DtypeOnReload()
sets_default_dtype_on_second_reload = _DtypeOnSecondReload()
