"""The symlink policy (reference/checkpoint.py `_check_link`), the same for the single file,
the index and every shard: a checkpoint file may be a symlink to a file in the directory,
or, in a hub-cache snapshot (`<repo>/snapshots/<rev>/`), to a file in `<repo>/blobs/`.
Anything else that resolves elsewhere is refused as unsafe, naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from generators.hostile import BASE_SPEC, OUTSIDE_FILE, VALID_LAYOUTS, hub_cache_layout
from generators.checkpoints import CheckpointPlan
from reference.contract import INDEX_FILE, SINGLE_FILE, LoadOptions, UnsafeCheckpointError
from reference.loading import ReferenceLoader


def _state(directory: Path) -> dict[str, torch.Tensor]:
    return dict(ReferenceLoader().load(str(directory), BASE_SPEC, LoadOptions()).state)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("name", sorted(VALID_LAYOUTS))
def test_hub_cache_layout_loads_like_the_plain_directory(name, tmp_path):
    snapshot = VALID_LAYOUTS[name](tmp_path)
    assert snapshot.parent.name == "snapshots"
    links = [p for p in snapshot.iterdir() if p.suffix in (".safetensors", ".json")]
    assert links and all(p.is_symlink() and os.readlink(p).startswith("../../blobs/")
                         for p in links)
    _assert_same(_state(snapshot), _state(tmp_path / "plain"))


@pytest.mark.parametrize("shards", [1, 2])
def test_a_snapshot_link_outside_blobs_is_unsafe(shards, tmp_path):
    plain = CheckpointPlan(BASE_SPEC, shards=shards, data_seed=7).write(tmp_path / "plain")
    snapshot = hub_cache_layout(plain, tmp_path / "hub")
    name = SINGLE_FILE if shards == 1 else sorted(
        p.name for p in snapshot.iterdir() if p.name.startswith("model-"))[0]
    outside = tmp_path / OUTSIDE_FILE  # the same bytes, outside the repo
    outside.write_bytes((snapshot / name).read_bytes())
    (snapshot / name).unlink()
    os.symlink(os.path.relpath(outside, snapshot), snapshot / name)
    with pytest.raises(UnsafeCheckpointError, match=name):
        _state(snapshot)


def test_blobs_are_trusted_only_from_a_snapshot(tmp_path):
    """A plain directory whose shards link into a sibling blobs/ is not a hub snapshot."""
    plain = CheckpointPlan(BASE_SPEC, shards=2, data_seed=7).write(tmp_path / "plain")
    snapshot = hub_cache_layout(plain, tmp_path / "hub")
    impostor = snapshot.parent.parent / "not-snapshots" / "rev"
    impostor.mkdir(parents=True)
    for link in snapshot.iterdir():
        os.symlink(os.readlink(link), impostor / link.name)
    with pytest.raises(UnsafeCheckpointError):
        _state(impostor)


def test_links_inside_the_directory_are_followed(tmp_path):
    plain = CheckpointPlan(BASE_SPEC, shards=2, data_seed=7).write(tmp_path / "plain")
    expected = _state(plain)
    for path in sorted(plain.iterdir()):
        if path.name.startswith("model-") or path.name == INDEX_FILE:
            os.replace(path, plain / f".{path.name}.real")
            os.symlink(f".{path.name}.real", path)
    _assert_same(_state(plain), expected)
