"""reference/filemap.py: a stitched private mapping holds exactly the ranges' bytes, in
order, whatever their alignment, and writing to it never reaches the file."""

from __future__ import annotations

import mmap

import pytest
import torch

from reference.filemap import FileRange, map_concatenated

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize("layout", [
    [(0, 3 * PAGE), (5 * PAGE, 2 * PAGE)],                 # page-aligned: all mapped
    [(40, 3 * PAGE), (40 + 5 * PAGE, 2 * PAGE + 8)],       # same residue: interior mapped
    [(40, 3 * PAGE), (5 * PAGE + 16, 2 * PAGE)],           # residues differ: one part read
    [(8, 2 * PAGE), (8 + 2 * PAGE, 3 * PAGE)],             # adjacent: merged into one
    [(8, 24), (4 * PAGE, 16), (64, 2 * PAGE)],             # tiny parts
])
def test_stitched_bytes_equal_the_ranges(layout, tmp_path):
    data = torch.randint(0, 256, (10 * PAGE,), dtype=torch.uint8)
    path = tmp_path / "blob"
    path.write_bytes(data.numpy().tobytes())
    ranges = [FileRange(path, offset, nbytes) for offset, nbytes in layout]
    total = sum(n for _, n in layout)
    mapped = map_concatenated(ranges, torch.float64, (total // 8,))
    assert mapped is not None
    expected = torch.cat([data[o:o + n] for o, n in layout])
    assert torch.equal(mapped.view(torch.uint8), expected)
    mapped.fill_(0)  # copy-on-write: the file keeps its bytes
    assert path.read_bytes() == data.numpy().tobytes()
    del mapped  # the region is released with the tensor


def test_a_byte_count_the_dtype_cannot_hold_is_declined(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(64))
    assert map_concatenated([FileRange(path, 0, 6)], torch.float32, (1,)) is None
