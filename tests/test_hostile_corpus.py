"""The reference refuses every named hostile checkpoint: with the declared family, a message
naming the file or tensor, before reading tensor data, without allocating what a header
claims, and without ever unpickling."""

from __future__ import annotations

import pickle
import tracemalloc

import pytest
import torch

from generators.hostile import HOSTILE_CASES
from generators.unpickling import marker_path
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
    assert not marker_path(directory).exists()


@pytest.mark.parametrize("name, file", [("pytorch-bin-only", "pytorch_model.bin"),
                                        ("pickle-posing-as-safetensors", "model.safetensors")])
def test_hostile_pickles_are_real_and_their_unpickling_is_detectable(name, file, tmp_path):
    """Unpickling them calls the suite's harmless marker (and nothing else); a restricted
    unpickler refuses the marker's global and calls nothing."""
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    HOSTILE_CASES[name].write(directory)
    if file.endswith(".bin"):  # a real torch.save file
        with pytest.raises(pickle.UnpicklingError, match="record_unpickling"):
            torch.load(directory / file, weights_only=True)
        assert not marker_path(directory).exists()
        loaded = torch.load(directory / file, weights_only=False)
        assert loaded["model.norm.weight"].shape == (8,)  # a naive loader gets the tensors
    else:
        pickle.loads((directory / file).read_bytes())
    assert marker_path(directory).exists(), "unpickling did not reach the marker"
