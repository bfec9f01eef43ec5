"""The reference refuses every named hostile checkpoint: with the declared family, a message
naming the file or tensor, before reading tensor data, without allocating what a header
claims, and without ever unpickling."""

from __future__ import annotations

import pickle
import tracemalloc

import pytest
import torch

from generators.hostile import HOSTILE_CASES
from reference.contract import LoadError
from reference.loading import ReferenceLoader


def test_the_corpus_has_at_least_25_named_cases():
    assert len(HOSTILE_CASES) >= 25


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_reference_refuses(name, tmp_path, monkeypatch):
    case = HOSTILE_CASES[name]
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    case.write(directory)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("something tried to unpickle")
    for target, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(target, attr, no_unpickling)

    tracemalloc.start()
    try:
        with pytest.raises(LoadError) as raised:
            ReferenceLoader().load(str(directory), case.spec, case.options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = raised.value
    assert error.family == case.family, f"{name}: expected {case.family}, got {error!r}"
    names_something = (bool(error.subject) and error.subject in str(error)) or any(
        part in str(error) for part in (".safetensors", str(directory)))
    assert names_something, f"{name}: the message should name the file or tensor: {error}"
    assert peak < 2**20, f"{name}: {peak} bytes allocated while refusing"
    assert not (directory / "UNPICKLED").exists()
