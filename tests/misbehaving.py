"""Candidates that misbehave as processes rather than as loaders: they kill their process,
raise what is not an Exception, or return what is not a result. Each is named on the
command line as `tests.misbehaving:<name>`; tests/test_completeness.py (and the survival
tests) prove a run against each ends with every failure recorded and never looks clean.

Each misbehaves on every load that the reference would complete (it loads first, then
misbehaves), so a test fails at its first loadable example; other calls (reload, quantize)
are the reference's."""

from __future__ import annotations

import ctypes

from reference.contract import LoadResult
from reference.loading import ReferenceLoader


class _Misbehaving(ReferenceLoader):
    def __init__(self, name: str, act):
        super().__init__()
        self.name, self._act = name, act

    def load(self, checkpoint, spec, options):
        result = super().load(checkpoint, spec, options)
        return self._act(lambda: result)


def _segfault(load):
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a bug in a C extension does


def _raise(kind):
    def act(load):
        raise kind("raised by the candidate")
    return act


def _non_tensors(load):
    result = load()
    state = dict(result.state)
    state[next(iter(state))] = [1.0, 2.0]  # a list where a tensor belongs
    return LoadResult(**{**vars(result), "state": state})


def _meta_tensors(load):
    result = load()
    return LoadResult(**{**vars(result), "state": {k: v.to("meta") for k, v in
                                                    result.state.items()}})


def _none(load):
    return None  # not a LoadResult: the harness itself fails on it


segfaults = _Misbehaving("segfaults", _segfault)
keyboard_interrupt = _Misbehaving("keyboard_interrupt", _raise(KeyboardInterrupt))
system_exit = _Misbehaving("system_exit", _raise(SystemExit))
generator_exit = _Misbehaving("generator_exit", _raise(GeneratorExit))
non_tensors = _Misbehaving("non_tensors", _non_tensors)
meta_tensors = _Misbehaving("meta_tensors", _meta_tensors)
returns_none = _Misbehaving("returns_none", _none)
