"""Checkpoint directories: validated reading and plain writing of safetensors files.

Reading parses every header itself (the safetensors library accepts duplicate JSON keys
and we must not), validates the index and every header before one byte of tensor data
is read, and reads tensor bytes straight into the caller's destination. Nothing here
unpickles, and nothing ever writes into a checkpoint it reads.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .contract import (CONFIG_FILE, INDEX_FILE, SINGLE_FILE, CorruptCheckpointError,
                       UnsafeCheckpointError, UnsupportedDtypeError, UnsupportedLayoutError)
from .dtypes import DTYPE_OF_CODE, SAFETENSORS_CODES
from .filemap import FileRange

__all__ = ["TensorEntry", "Checkpoint", "open_checkpoint", "read_header", "open_regular",
           "write_safetensors", "write_checkpoint", "shard_file_name"]

# Bounds on what a checkpoint's JSON may cost before it is parsed. Real headers are
# kilobytes and real indexes a few megabytes (a 1T-parameter MoE's ~140k keys: ~15 MB);
# parsing costs about 40 bytes of memory per JSON token (a string, comma or bracket), so
# 1M tokens (~58k tensors in one header, ~200k index keys) stay under ~100 MB.
MAX_HEADER_BYTES = 32 * 2**20
MAX_INDEX_BYTES = 32 * 2**20
MAX_JSON_TOKENS = 1_000_000

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: Path, name: str):
    """`path` opened for reading, refused (naming it) unless it is a regular file: a FIFO
    blocks a reader forever, a device never ends, a directory is not data. The type is
    checked on the opened descriptor (O_NONBLOCK: opening a FIFO does not wait), so nothing
    can be swapped in between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CorruptCheckpointError(f"{name}: cannot be opened: {exc.strerror or exc}",
                                     subject=name) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
        raise CorruptCheckpointError(f"{name}: is {kind}, not a regular file; a checkpoint "
                                     f"file must be one", subject=name)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def _parse_json(raw: bytes, name: str, what: str) -> Any:
    """Parse a header or index after bounding its memory (tokens, counted in C before one
    object is built); nesting deeper than the interpreter's recursion limit is refused."""
    tokens = sum(raw.count(c) for c in (b'"', b",", b"{", b"["))
    if tokens > MAX_JSON_TOKENS:
        raise CorruptCheckpointError(f"{name}: {what} holds about {tokens} JSON tokens, more "
                                     f"than the {MAX_JSON_TOKENS} this reader parses (real "
                                     f"ones hold far fewer)", subject=name)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{name}: {what} is not valid UTF-8 JSON: {exc}",
                                     subject=name) from None


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of one file: where its bytes are, validated against the file size."""

    key: str
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the first element in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate JSON key {key!r}")
        seen[key] = value
    return seen


def _load_json(path: Path, what: str, limit: int = MAX_INDEX_BYTES) -> Any:
    with open_regular(path, path.name) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CorruptCheckpointError(f"{path.name}: {what} is {size} bytes, more than the "
                                         f"{limit}-byte limit", subject=path.name)
        raw = f.read(size)
    return _parse_json(raw, path.name, what)


def read_header(path: Path, trailing_bytes: str = "refuse") -> dict[str, TensorEntry]:
    """Parse and validate one safetensors file's header; reads no tensor data.
    `trailing_bytes` is the contract's variant: "allow" accepts bytes after the last tensor."""
    name = path.name

    def corrupt(reason: str, subject: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{name}: {reason}", subject=subject or name)

    with open_regular(path, name) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise corrupt(f"file is {size} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise corrupt(f"header length {header_len} exceeds the file ({size} bytes) "
                          f"or the {MAX_HEADER_BYTES}-byte limit")
        raw = f.read(header_len)
    header = _parse_json(raw, name, "header")
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise corrupt("__metadata__ must map strings to strings")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise corrupt(f"tensor {key!r} needs exactly dtype, shape and data_offsets", key)
        dtype = DTYPE_OF_CODE.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise UnsupportedDtypeError(f"{name}: tensor {key!r} has unsupported dtype "
                                        f"{info['dtype']!r}", subject=key)
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise corrupt(f"tensor {key!r} has invalid shape {shape!r}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]
                <= data_size):
            raise corrupt(f"tensor {key!r} has data_offsets {offsets!r}: not 0 <= begin <= "
                          f"end <= {data_size} (the data section's size)", key)
        nbytes = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise corrupt(f"tensor {key!r}: shape {shape} of {info['dtype']} needs {nbytes} "
                          f"bytes but data_offsets span {offsets[1] - offsets[0]}", key)
        entries[key] = TensorEntry(key, name, dtype, tuple(shape), data_start + offsets[0], nbytes)
    # Overlap: compare each tensor with the furthest-reaching one before it (an empty
    # tensor between two overlapping ones must not hide the overlap).
    reach: TensorEntry | None = None
    covered = data_start  # the safetensors format: the data section is tensors, no holes
    for entry in sorted((e for e in entries.values() if e.nbytes), key=lambda e: e.offset):
        if reach is not None and reach.offset + reach.nbytes > entry.offset:
            raise corrupt(f"tensors {reach.key!r} and {entry.key!r} overlap", entry.key)
        if entry.offset > covered:
            raise corrupt(f"bytes {covered - data_start}:{entry.offset - data_start} of the "
                          f"data section belong to no tensor (a hole before {entry.key!r})",
                          entry.key)
        if reach is None or entry.offset + entry.nbytes > reach.offset + reach.nbytes:
            reach = entry
        covered = max(covered, entry.offset + entry.nbytes)
    if covered != data_start + data_size and trailing_bytes != "allow":
        raise corrupt(f"the last {data_start + data_size - covered} bytes of the data section "
                      f"belong to no tensor (safetensors refuses a file its header does not "
                      f"cover)")
    # An empty tensor may sit only between tensors (safetensors checks the same): one whose
    # offset lies inside another tensor's bytes is a header that lies about the layout.
    boundaries = {e.offset for e in entries.values() if e.nbytes} | {covered}
    for entry in entries.values():
        if not entry.nbytes and entry.offset not in boundaries:
            raise corrupt(f"empty tensor {entry.key!r} has data_offsets inside another "
                          f"tensor's bytes", entry.key)
    return entries


def _check_shard_name(directory: Path, file_name: Any) -> None:
    """A weight_map file must be a plain file name inside the checkpoint directory."""
    if not isinstance(file_name, str) or not file_name or file_name in (".", "..") or any(
            c in file_name for c in ("/", "\\", "\0")) or os.path.isabs(file_name):
        raise UnsafeCheckpointError(
            f"{INDEX_FILE}: shard name {file_name!r} is not a plain file name inside "
            f"{directory}", subject=str(file_name))


def _check_link(root: Path, directory: Path, file_name: str) -> None:
    """The symlink policy, the same for the single file, the index and every shard: a
    checkpoint file must resolve to a file directly in the directory, or, when the directory
    is a Hugging Face hub-cache snapshot (`<repo>/snapshots/<rev>/`, whose files are symlinks
    to `../../blobs/<hash>`), directly in that repo's `blobs/`. Names are checked before
    this (`_check_shard_name`): a name never leaves the directory, a link may only go there."""
    path = directory / file_name
    try:
        if not (path.is_symlink() or path.exists()):
            return
        home = path.resolve().parent
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop, no permission
        shown = file_name if len(file_name) <= 80 else (
            f"{file_name[:40]}...{file_name[-20:]} ({len(file_name)} characters)")
        raise CorruptCheckpointError(f"{shown} cannot be resolved: "
                                     f"{getattr(exc, 'strerror', None) or exc}",
                                     subject=file_name) from None
    if home != root and not (root.parent.name == "snapshots"
                             and home == root.parent.parent / "blobs"):
        raise UnsafeCheckpointError(f"{file_name} resolves outside {directory} (to {home})",
                                    subject=file_name)


def _valid_bools(entry: TensorEntry, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as it is, unless it is bool with a byte other than 0 or 1: torch would hold
    it as is, and such a value is neither true nor false (== and any() disagree on it).
    Only bool tensors are scanned, so the cost is theirs alone."""
    if entry.dtype == torch.bool and tensor.numel():
        bad = (tensor.view(torch.uint8) > 1).reshape(-1).nonzero()
        if bad.numel():
            raise CorruptCheckpointError(
                f"{entry.file}: bool tensor {entry.key!r} holds byte "
                f"{int(tensor.view(torch.uint8).reshape(-1)[bad[0, 0]])} at element "
                f"{int(bad[0, 0])} (a bool must be 0 or 1)", subject=entry.key)
    return tensor


class Checkpoint:
    """A validated checkpoint directory: every tensor's entry, and reads into tensors."""

    def __init__(self, directory: Path, entries: dict[str, TensorEntry]):
        self.directory = directory
        self.entries = entries
        self._files: dict[str, Any] = {}
        self._mappings: dict[str, torch.UntypedStorage] = {}

    def config(self) -> dict[str, Any]:
        path = self.directory / CONFIG_FILE
        return _load_json(path, "config") if path.is_file() else {}

    def _file(self, name: str):
        if name not in self._files:
            self._files[name] = open_regular(self.directory / name, name)
        return self._files[name]

    def read_into(self, entry: TensorEntry, out: torch.Tensor, rows: tuple[int, int] | None = None
                  ) -> torch.Tensor:
        """Copy the bytes of `entry` (or of rows [start, stop) of its first dim) into the
        contiguous CPU tensor `out`, which must have the entry's dtype and byte size."""
        start, stop = rows if rows is not None else (0, entry.shape[0] if entry.shape else 1)
        offset = entry.offset + start * entry.row_bytes
        nbytes = (stop - start) * entry.row_bytes
        if out.dtype != entry.dtype or not out.is_contiguous() or out.device.type != "cpu" \
                or out.numel() * out.element_size() != nbytes:
            raise ValueError(f"read_into({entry.key}): destination {tuple(out.shape)} "
                             f"{out.dtype} cannot hold {nbytes} bytes of {entry.dtype}")
        if nbytes:
            view = memoryview((ctypes.c_ubyte * nbytes).from_address(out.data_ptr())).cast("B")
            f, done = self._file(entry.file), 0
            while done < nbytes:
                got = os.preadv(f.fileno(), [view[done:]], offset + done)
                if got <= 0:
                    raise CorruptCheckpointError(f"{entry.file}: tensor {entry.key!r} is "
                                                 f"truncated", subject=entry.key)
                done += got
        return _valid_bools(entry, out)

    def read(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """A fresh CPU tensor holding `entry` (or rows of it)."""
        shape = list(entry.shape)
        if rows is not None:
            shape[0] = rows[1] - rows[0]
        return self.read_into(entry, torch.empty(shape, dtype=entry.dtype), rows)

    def byte_range(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> FileRange:
        """Where `entry`'s bytes (or rows [start, stop) of them) lie in its file."""
        start, stop = rows if rows is not None else (0, entry.shape[0] if entry.shape else 1)
        return FileRange(self.directory / entry.file, entry.offset + start * entry.row_bytes,
                         (stop - start) * entry.row_bytes)

    def map(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor | None:
        """A CPU tensor over a private (copy-on-write) mapping of the file holding exactly
        `entry`'s bytes (or rows of them): no copy, and writes to it never reach the file.
        None when the data is not aligned to the element size (then the caller copies)."""
        itemsize = entry.dtype.itemsize
        start, stop = rows if rows is not None else (0, entry.shape[0] if entry.shape else 1)
        offset = entry.offset + start * entry.row_bytes
        if offset % itemsize:
            return None
        storage = self._mappings.get(entry.file)
        if storage is None:
            path = self.directory / entry.file
            try:
                storage = torch.UntypedStorage.from_file(str(path), shared=False,
                                                         nbytes=path.stat().st_size)
            except (RuntimeError, OSError) as exc:  # ENOMEM: larger than this machine maps
                raise UnsupportedLayoutError(f"{entry.file}: cannot be mapped into memory "
                                             f"here ({path.stat().st_size} bytes): {exc}",
                                             subject=entry.file) from None
            self._mappings[entry.file] = storage
        shape = list(entry.shape)
        if rows is not None and shape:
            shape[0] = stop - start
        return _valid_bools(entry, torch.empty(0, dtype=entry.dtype).set_(
            storage, offset // itemsize, shape))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._mappings.clear()  # tensors over a mapping keep it alive on their own

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_checkpoint(directory: str | os.PathLike, trailing_bytes: str = "refuse") -> Checkpoint:
    """Validate a checkpoint directory (index first, then every header) and index it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorruptCheckpointError(f"{directory} is not a directory", subject=str(directory))
    root = directory.resolve()
    index_path = directory / INDEX_FILE
    _check_link(root, directory, INDEX_FILE)
    if not index_path.exists():
        _check_link(root, directory, SINGLE_FILE)
        single = directory / SINGLE_FILE
        if not single.exists():
            raise CorruptCheckpointError(f"{directory} has neither {SINGLE_FILE} nor "
                                         f"{INDEX_FILE}", subject=str(directory))
        return Checkpoint(directory, read_header(single, trailing_bytes))

    index = _load_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError(f"{INDEX_FILE} has no weight_map object", subject=INDEX_FILE)
    for file_name in weight_map.values():  # every name is checked before any file opens
        _check_shard_name(directory, file_name)
    files = sorted(set(weight_map.values()))
    for file_name in files:  # every shard exists and stays inside before any header is read
        path = directory / file_name
        _check_link(root, directory, file_name)
        if not path.exists():
            raise CorruptCheckpointError(f"{INDEX_FILE} names {file_name}, which is not a "
                                         f"file in {directory}", subject=file_name)
        open_regular(path, file_name).close()  # a FIFO or a directory: refused by its type
    entries: dict[str, TensorEntry] = {}
    for file_name in files:
        for key, entry in read_header(directory / file_name, trailing_bytes).items():
            assigned = weight_map.get(key)
            if assigned != file_name:
                where = f"the index assigns it to {assigned}" if assigned else "the index does not list it"
                raise CorruptCheckpointError(f"tensor {key!r} sits in {file_name} but {where}",
                                             subject=key)
            entries[key] = entry
    absent = sorted(set(weight_map) - set(entries))
    if absent:
        raise CorruptCheckpointError(
            f"{INDEX_FILE} assigns {absent[0]!r} to {weight_map[absent[0]]}, which has no such "
            f"tensor" + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""),
            subject=absent[0])
    return Checkpoint(directory, entries)


# ----- writing (generators and benchmarks) ----------------------------------------------
def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return ctypes.string_at(flat.data_ptr(), flat.numel() * flat.element_size())


def write_safetensors(path: Path, items: Iterable[tuple[str, torch.Tensor]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors in the given order (data and header alike), so order is a choice."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for key, tensor in items:
        blob = _tensor_bytes(tensor)
        header[key] = {"dtype": SAFETENSORS_CODES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "xb") as f:  # never overwrite an existing file
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)


def shard_file_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_checkpoint(directory: Path, config: Mapping[str, Any],
                     shards: Sequence[Sequence[tuple[str, torch.Tensor]]]) -> None:
    """Write config.json and one file, or several shards and their index."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    if len(shards) == 1:
        write_safetensors(directory / SINGLE_FILE, shards[0], {"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, items in enumerate(shards):
        name = shard_file_name(i, len(shards))
        write_safetensors(directory / name, items, {"format": "pt"})
        for key, tensor in items:
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    (directory / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
