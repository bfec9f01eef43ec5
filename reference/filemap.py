"""One private memory mapping stitched from several byte ranges of checkpoint files.

A fused parameter (q/k/v, gate/up) is its parts' rows one after another, but on disk the
parts are separate tensors, often not adjacent (HF writes keys sorted: k, o, q, v). Instead
of allocating the fused buffer and copying every part into it, an anonymous region is
reserved and each part's file pages are mapped over its place in it (MAP_FIXED, private:
copy-on-write, writes never reach the file). A page maps a file page only when the part's
file offset and its place in the region agree modulo the page size; the few pages that do
not (a part's first and last partial page, or a whole part whose alignment differs from
the first part's) are filled by reading. Real checkpoints (tensor sizes that are multiples
of the page size) map all but two pages per part boundary.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["FileRange", "map_concatenated"]

PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class FileRange:
    """`nbytes` bytes of `path` starting at byte `offset`."""

    path: Path
    offset: int
    nbytes: int


def _libc_mmap():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no libc to call: callers copy instead
        return None
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    return libc.mmap


_MMAP = _libc_mmap()
_MAP_FAILED = ctypes.c_void_p(-1).value


def _merge(ranges: Sequence[FileRange]) -> list[FileRange]:
    """Adjacent ranges of one file become one (a fused-on-disk tensor, or gate then up)."""
    merged: list[FileRange] = []
    for r in ranges:
        last = merged[-1] if merged else None
        if last is not None and last.path == r.path and last.offset + last.nbytes == r.offset:
            merged[-1] = FileRange(r.path, last.offset, last.nbytes + r.nbytes)
        else:
            merged.append(r)
    return merged


def _read(fd: int, into: memoryview, offset: int, what: Path) -> None:
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], offset + done)
        if got <= 0:
            raise OSError(f"{what}: short read at byte {offset + done}")
        done += got


def map_concatenated(ranges: Sequence[FileRange], dtype: torch.dtype,
                     shape: Sequence[int]) -> torch.Tensor | None:
    """A writable CPU tensor of `shape` whose bytes are the ranges, in order, without a copy
    where the pages allow; None where mapping is unavailable (not Linux) or the byte count
    does not fit `dtype`. The tensor keeps its mapping alive; the files may close."""
    ranges = _merge([r for r in ranges if r.nbytes])
    total = sum(r.nbytes for r in ranges)
    if _MMAP is None or not ranges or total % dtype.itemsize:
        return None
    # The region's start residue follows the largest range, so that range maps whole.
    largest = max(range(len(ranges)), key=lambda i: ranges[i].nbytes)
    before = sum(r.nbytes for r in ranges[:largest])
    lead = (ranges[largest].offset - before) % PAGE
    if lead % dtype.itemsize:  # the tensor must start element-aligned in the region
        return None
    region = mmap.mmap(-1, lead + total + PAGE, flags=mmap.MAP_PRIVATE)  # anonymous; freed with it
    anchor = ctypes.c_char.from_buffer(region)
    base = ctypes.addressof(anchor)
    del anchor  # an exported buffer would pin the region open
    view = memoryview(region)
    at = lead
    try:
        for r in ranges:
            with open(r.path, "rb", buffering=0) as f:
                fd = f.fileno()
                first = -(-at // PAGE) * PAGE            # first whole page of this range
                last = (at + r.nbytes) // PAGE * PAGE    # end of its last whole page
                if (r.offset - at) % PAGE == 0 and last > first:
                    got = _MMAP(base + first, last - first, mmap.PROT_READ | mmap.PROT_WRITE,
                                mmap.MAP_PRIVATE | 0x10,  # MAP_FIXED
                                fd, r.offset + first - at)
                    if got == _MAP_FAILED:
                        raise OSError(ctypes.get_errno(), f"mmap of {r.path} failed")
                    _read(fd, view[at:first], r.offset, r.path)
                    _read(fd, view[last:at + r.nbytes], r.offset + last - at, r.path)
                else:
                    _read(fd, view[at:at + r.nbytes], r.offset, r.path)
            at += r.nbytes
    finally:
        view.release()
    flat = torch.frombuffer(region, dtype=torch.uint8, offset=lead, count=total)
    return flat.view(dtype).view(tuple(shape))
