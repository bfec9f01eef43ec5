"""The reference is bounded on hostile input: every resource-hostile class
(generators/hostile_bounds.py), at the largest size an attacker tried, is refused with its
family error naming the file, in a fresh process, with less than 100 MB above what the
process held before the load. Wall time per class is in benchmarks/test_hostile_bounds.py
(the goal there: under 1 s)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from generators.hostile_bounds import BOUNDED_CLASSES, bounded_cases
from reference.checkpoint import open_checkpoint
from reference.contract import LoadError, UnsupportedLayoutError
from reference.loading import ReferenceLoader
from tests.hostile_probe import probe

PEAK_LIMIT = 100 * 10**6


def _names_the_file(error: dict, directory) -> bool:
    message = error["message"]
    return bool(error.get("subject")) and error["subject"] in message or any(
        part in message for part in (".safetensors", ".json", str(directory)))


@pytest.mark.parametrize("name", sorted(BOUNDED_CLASSES))
def test_each_hostile_class_is_refused_in_bounded_memory(name, tmp_path):
    case = BOUNDED_CLASSES[name].case()
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    case.write(directory)
    result = probe(directory, case.spec, timeout=60)
    assert result["family"] == case.family, f"{case.name}: {result}"
    assert _names_the_file(result, directory), result["message"]
    assert result["peak_bytes"] < PEAK_LIMIT, \
        f"{case.name}: {result['peak_bytes'] / 1e6:.0f} MB while refusing"


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=bounded_cases())
def test_any_size_of_a_hostile_class_is_refused_with_its_family(case, tmp_path_factory):
    """In process (no memory measurement): the family does not depend on the size."""
    directory = tmp_path_factory.mktemp("bounded") / "checkpoint"
    directory.mkdir()
    case.write(directory)
    with pytest.raises(LoadError) as raised:
        ReferenceLoader().load(str(directory), case.spec, case.options)
    assert raised.value.family == case.family, (case.name, raised.value)


def test_a_checkpoint_larger_than_memory_is_a_family_error(tmp_path, monkeypatch):
    """mmap refusing a mapping (ENOMEM on a file larger than memory) names the file; the
    failure is forced here, since this machine would need a file larger than its memory."""
    from generators.hostile import _valid
    directory = tmp_path / "checkpoint"
    _valid(directory)

    def no_memory(*args, **kwargs):
        raise RuntimeError("unable to mmap 1099511627776 bytes: Cannot allocate memory (12)")
    monkeypatch.setattr(torch.UntypedStorage, "from_file", no_memory)
    checkpoint = open_checkpoint(directory)
    entry = next(iter(checkpoint.entries.values()))
    with pytest.raises(UnsupportedLayoutError, match="model.safetensors: cannot be mapped"):
        checkpoint.map(entry)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_an_unreadable_file_is_a_family_error(tmp_path):
    from generators.hostile import BASE_SPEC, _valid
    directory = tmp_path / "checkpoint"
    _valid(directory)
    (directory / "model.safetensors").chmod(0)
    with pytest.raises(LoadError, match="model.safetensors: cannot be opened"):
        ReferenceLoader().load(str(directory), BASE_SPEC, BOUNDED_CLASSES[
            "index-is-fifo"].case().options)
