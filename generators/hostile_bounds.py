"""Hostile checkpoints that attack the reader's resources rather than its logic: files that
are not regular files (a FIFO blocks a reader forever, a device never ends), JSON that
amplifies (many entries, deep nesting, a huge index), names the operating system refuses,
and two silent loads (an empty tensor inside another, a bool byte that is neither 0 nor 1).

Classes with a size or depth take it as a parameter (`BoundedClass.case(size)`), and
`bounded_cases()` draws class and size; `sizes` lists what the tests measure, the largest
being what an attacker tried. Some of these would block or exhaust a candidate loader that
reads them naively (a FIFO, /dev/zero: `blocks_a_reader`); the conformance suite offers
those to a candidate only under --isolate, the others always, each at its smallest size
(conformance/test_hostile.py); tests/test_hostile_bounds.py measures the reference at the
attacker's sizes."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hypothesis import strategies as st

from reference.contract import INDEX_FILE, SINGLE_FILE, ExtraParam, ModelSpec
from .checkpoints import CheckpointPlan
from .hostile import BASE_SPEC, HostileCase, _index, _rewrite_header, _valid, _write_index

__all__ = ["BoundedClass", "BOUNDED_CLASSES", "bounded_cases"]


@dataclass(frozen=True)
class BoundedClass:
    name: str
    family: str                              # what the reference raises
    why: str                                 # with {size} where the class has one
    write: Callable[[Path, int], None]       # (directory, size)
    sizes: tuple[int, ...] = (0,)            # 0: the class has no size
    spec: ModelSpec = BASE_SPEC
    # a naive reader never returns from it (a FIFO blocks; /dev/zero never ends and fills
    # memory): in process that takes the run down with it, so only an isolated candidate meets it
    blocks_a_reader: bool = False
    # the reference refuses it only for its own resource bounds (token budget, size cap,
    # nesting), not as malformed: a candidate may load it instead, if it returns at all
    bound_only: bool = False

    def case(self, size: int | None = None) -> HostileCase:
        size = self.sizes[-1] if size is None else size
        return HostileCase(f"{self.name}[{size}]" if size else self.name, self.family,
                           self.why.format(size=size),
                           lambda directory: self.write(directory, size), spec=self.spec,
                           needs=self.needs)

    @property
    def needs(self) -> frozenset[str]:
        """The capabilities a candidate must claim to be offered it: an index or a shard
        means `sharded`, the bool tensor `extras`."""
        if self.name.startswith(("index-", "shard-")):
            return frozenset({"load", "sharded"})
        return frozenset({"load", "extras"}) if self.spec.extras else frozenset({"load"})


def _first_shard(directory: Path) -> Path:
    return directory / sorted(set(_index(directory)["weight_map"].values()))[0]


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


def _fifo(which: str) -> Callable[[Path, int], None]:
    def write(directory: Path, size: int) -> None:
        _valid(directory, shards=1 if which == "single" else 2)
        target = {"single": directory / SINGLE_FILE, "index": directory / INDEX_FILE,
                  "shard": _first_shard(directory) if which == "shard" else None}[which]
        _replace(target, lambda p: os.mkfifo(p))
    return write


def _a_directory(which: str) -> Callable[[Path, int], None]:
    def write(directory: Path, size: int) -> None:
        _valid(directory, shards=1 if which == "single" else 2)
        _replace(directory / (SINGLE_FILE if which == "single" else INDEX_FILE),
                 lambda p: p.mkdir())
    return write


def _index_to_dev_zero(directory: Path, size: int) -> None:
    _valid(directory, shards=2)
    _replace(directory / INDEX_FILE, lambda p: os.symlink("/dev/zero", p))


def _empty_entries(directory: Path, count: int) -> None:
    """`count` empty tensors, all at offset 0: each valid alone, ~17 JSON tokens apiece."""
    _valid(directory)

    def edit(header: dict) -> None:
        for i in range(count):
            header[f"empty.{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    _rewrite_header(directory / SINGLE_FILE, edit)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_header(directory: Path, depth: int) -> None:
    _valid(directory)
    raw = ('{"x":{"dtype":"F32","shape":' + _deep(depth) + ',"data_offsets":[0,0]}}').encode()
    _rewrite_header(directory / SINGLE_FILE, raw_header=raw)


def _deep_index(directory: Path, depth: int) -> None:
    _valid(directory, shards=2)
    index = json.dumps(_index(directory))
    (directory / INDEX_FILE).write_text(index[:-1] + ',"deep":' + _deep(depth) + "}")


def _huge_index(directory: Path, size: int) -> None:
    """A valid index padded with whitespace to `size` bytes (sparse: written in no time)."""
    _valid(directory, shards=2)
    path = directory / INDEX_FILE
    raw = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(size)
        f.seek(size - len(raw))
        f.write(raw)
    with open(path, "r+b") as f:  # the hole reads as NULs: make it spaces at its start
        f.write(b" " * min(size - len(raw), 4096))


def _many_index_keys(directory: Path, count: int) -> None:
    _valid(directory, shards=2)
    index = _index(directory)
    shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"].update({f"k{i}": shard for i in range(count)})
    _write_index(directory, index)


def _name_too_long(directory: Path, size: int) -> None:
    _valid(directory, shards=2)
    index = _index(directory)
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = "m" * size + ".safetensors"
    _write_index(directory, index)


def _symlink_loop(directory: Path, size: int) -> None:
    _valid(directory)
    (directory / SINGLE_FILE).unlink()
    os.symlink("loop.safetensors", directory / SINGLE_FILE)
    os.symlink(SINGLE_FILE, directory / "loop.safetensors")


def _empty_inside_another(directory: Path, size: int) -> None:
    """An extra empty tensor whose offsets point into the middle of a real one."""
    _valid(directory)

    def edit(header: dict) -> None:
        begin, end = max(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
        middle = begin + (end - begin) // 2
        header["model.hidden"] = {"dtype": "F32", "shape": [0], "data_offsets": [middle, middle]}
    _rewrite_header(directory / SINGLE_FILE, edit)


_BOOL_SPEC = ModelSpec(family="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                       num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                       extras=(ExtraParam("mask", "bool", (4,)),))


def _bool_byte(directory: Path, size: int) -> None:
    """The bool extra's third byte is 2: safetensors and torch take it as it is."""
    CheckpointPlan(_BOOL_SPEC, data_seed=7).write(directory)
    path = directory / SINGLE_FILE
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    begin, _ = json.loads(raw[8:8 + length])["model.extras.mask"]["data_offsets"]
    raw[8 + length + begin + 2] = 2
    path.unlink()
    path.write_bytes(bytes(raw))


BOUNDED_CLASSES: dict[str, BoundedClass] = {c.name: c for c in [
    BoundedClass("index-is-fifo", "corrupt_checkpoint",
                 "the index is a FIFO (a naive reader blocks forever)", _fifo("index"),
                 blocks_a_reader=True),
    BoundedClass("single-file-is-fifo", "corrupt_checkpoint", "model.safetensors is a FIFO",
                 _fifo("single"),
                 blocks_a_reader=True),
    BoundedClass("shard-is-fifo", "corrupt_checkpoint", "a shard is a FIFO", _fifo("shard"),
                 blocks_a_reader=True),
    BoundedClass("index-is-directory", "corrupt_checkpoint", "the index is a directory",
                 _a_directory("index")),
    BoundedClass("single-file-is-directory", "corrupt_checkpoint",
                 "model.safetensors is a directory", _a_directory("single")),
    BoundedClass("index-is-dev-zero", "unsafe_checkpoint",
                 "the index is a symlink to /dev/zero (an endless read)", _index_to_dev_zero,
                 blocks_a_reader=True),
    BoundedClass("header-many-empty-entries", "corrupt_checkpoint",
                 "the header adds {size} empty tensors (memory amplification)",
                 _empty_entries, sizes=(70_000, 600_000), bound_only=True),
    BoundedClass("header-deep-nesting", "corrupt_checkpoint",
                 "a shape nests {size} levels deep (recursion)", _deep_header,
                 sizes=(2_000, 1_000_000)),
    BoundedClass("index-deep-nesting", "corrupt_checkpoint",
                 "the index nests {size} levels deep (recursion)", _deep_index,
                 sizes=(2_000, 1_000_000), bound_only=True),
    BoundedClass("index-huge", "corrupt_checkpoint", "the index is {size} bytes",
                 _huge_index, sizes=(40 * 2**20, 200 * 10**6), bound_only=True),
    BoundedClass("index-many-keys", "corrupt_checkpoint",
                 "the index lists {size} keys (memory and time amplification)",
                 _many_index_keys, sizes=(250_000, 1_000_000)),
    BoundedClass("index-name-too-long", "corrupt_checkpoint",
                 "a weight_map file name is {size} characters (ENAMETOOLONG)",
                 _name_too_long, sizes=(256, 4096)),
    BoundedClass("single-file-symlink-loop", "corrupt_checkpoint",
                 "model.safetensors is a symlink loop", _symlink_loop),
    BoundedClass("empty-tensor-inside-another", "corrupt_checkpoint",
                 "an empty tensor's offsets lie inside another tensor (safetensors refuses)",
                 _empty_inside_another),
    BoundedClass("bool-byte-not-0-or-1", "corrupt_checkpoint",
                 "a bool tensor holds the byte 2", _bool_byte, spec=_BOOL_SPEC),
]}


@st.composite
def bounded_cases(draw) -> HostileCase:
    """A class and a size between its smallest and largest measured size."""
    cls = draw(st.sampled_from(sorted(BOUNDED_CLASSES.values(), key=lambda c: c.name)))
    low, high = cls.sizes[0], cls.sizes[-1]
    return cls.case(draw(st.integers(low, high)) if high > low else low)
