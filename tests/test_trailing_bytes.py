"""The `trailing_bytes` variant (issue 17, fastsafetensors F6): bytes after the last
tensor's data are corrupt under "refuse" (the default, as the safetensors library) and
ignored under "allow" (fastsafetensors' alignment padding); a hole between two tensors is
corrupt under both."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from generators.checkpoints import CheckpointPlan
from reference.checkpoint import read_header
from reference.contract import SINGLE_FILE, CorruptCheckpointError, LoadOptions, ModelSpec
from reference.loading import ReferenceLoader

SPEC = ModelSpec(family="llama", num_layers=1)
PADDING = bytes(8)


def _with_trailing_bytes(directory: Path, file_name: str) -> Path:
    with open(directory / file_name, "ab") as f:
        f.write(PADDING)
    return directory


@pytest.mark.parametrize("shards", [1, 2])
def test_trailing_bytes_refused_by_default_and_ignored_when_allowed(tmp_path, shards):
    clean = CheckpointPlan(SPEC, shards=shards, data_seed=3).write(tmp_path / "clean")
    padded = CheckpointPlan(SPEC, shards=shards, data_seed=3).write(tmp_path / "padded")
    last = sorted(p.name for p in padded.glob("*.safetensors"))[-1]
    _with_trailing_bytes(padded, last)

    with pytest.raises(CorruptCheckpointError, match="last 8 bytes of the data section") as err:
        ReferenceLoader().load(str(padded), SPEC, LoadOptions())
    assert err.value.subject.endswith(last), f"the error names the file: {err.value.subject}"

    allowing = ReferenceLoader(variants={"trailing_bytes": "allow"})
    want = ReferenceLoader().load(str(clean), SPEC, LoadOptions())
    got = allowing.load(str(padded), SPEC, LoadOptions())
    assert sorted(got.state) == sorted(want.state)
    for name, tensor in want.state.items():
        assert torch.equal(got.state[name], tensor), \
            f"trailing_bytes=allow: {name} differs from the load without the padding"


def _raw_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("trailing_bytes", ["refuse", "allow"])
def test_a_hole_between_tensors_is_corrupt_under_either_value(tmp_path, trailing_bytes):
    path = _raw_file(tmp_path / SINGLE_FILE,
                     {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}},
                     bytes(24))
    with pytest.raises(CorruptCheckpointError, match="a hole before 'b'"):
        read_header(path, trailing_bytes)


def test_allow_still_needs_every_tensor_inside_the_file(tmp_path):
    path = _raw_file(tmp_path / SINGLE_FILE,
                     {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8))
    with pytest.raises(CorruptCheckpointError, match="data_offsets"):
        read_header(path, "allow")
