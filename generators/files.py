"""Edits of written checkpoint files, for defects the writer does not make itself: an index
that disagrees with its shards, a header whose byte span disagrees with its shape. Only
the generator's own temporary directories are edited."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from reference.contract import INDEX_FILE

__all__ = ["read_header_keys", "respan", "rewrite_index"]


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def read_header_keys(path: Path) -> set[str]:
    """The tensor keys of a safetensors file written by the generator."""
    return set(_split(path)[0]) - {"__metadata__"}


def respan(path: Path, key: str, delta: int) -> None:
    """Make `key`'s data_offsets span `delta` bytes more (or fewer) than its shape needs,
    keeping the file otherwise well formed: its bytes grow (zeros) or shrink at their end,
    and every later tensor moves with them, so the span is the only lie in the header."""
    header, data = _split(path)
    begin, end = header[key]["data_offsets"]
    new_end = max(begin, end + delta)
    data = data[:begin] + data[begin:end][:new_end - begin].ljust(new_end - begin, b"\0") \
        + data[end:]
    for info in header.values():
        if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] >= end \
                and info is not header[key]:
            info["data_offsets"] = [o + new_end - end for o in info["data_offsets"]]
    header[key]["data_offsets"] = [begin, new_end]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def rewrite_index(directory: Path, weight_map: dict[str, str]) -> None:
    """Replace the index's weight_map (its metadata kept)."""
    path = directory / INDEX_FILE
    index = json.loads(path.read_text())
    index["weight_map"] = weight_map
    path.write_text(json.dumps(index, indent=1))
