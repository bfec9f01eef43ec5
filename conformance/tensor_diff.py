"""Where and how far two tensors of one dtype and shape differ, as the record's fields:
counts (poisoned and non-finite elements among the differing), absolute, relative and
ULP distances with their histogram, the rows that differ, the first differing element, and
a downsampled 2-D mismatch map."""

from __future__ import annotations

import ctypes
import sys

import torch
import torch.nn.functional as F

from reference.dtypes import PLAIN_FLOATS, poison_mask
from reports.schema import Counts, Diffs, Mark, MismatchMap

__all__ = ["bits", "same_bits", "format_element", "TensorDiff", "diff_tensors", "MAP_CELLS"]

# A mismatch map has at most this many cells per side: enough to see a slot, a rank or a
# half, small enough that a record of 26 divergences stays a few kilobytes.
MAP_CELLS = 32

# ULP-distance bins of the histogram: a rounding difference lands in "1", garbage far right.
_ULP_BINS = ((1, 1, "1"), (2, 3, "2-3"), (4, 15, "4-15"), (16, 255, "16-255"),
             (256, None, "256+"))


def bits(t: torch.Tensor) -> torch.Tensor:
    """One integer per element holding its bit pattern, for exact NaN-aware comparison."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if t.dtype == torch.bool:
        return flat.to(torch.uint8)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return flat.view(as_int)


def _libc_memcmp():
    try:
        libc = ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt
        memcmp = libc.memcmp
    except (OSError, AttributeError):
        return None
    memcmp.restype, memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p,
                                                     ctypes.c_size_t]
    return memcmp


_memcmp = _libc_memcmp()


def same_bits(expected: torch.Tensor, found: torch.Tensor) -> bool:
    """Whether two tensors of one dtype and shape hold the same bits. memcmp where it can:
    torch.equal compares element by element in a scalar loop (about 1.5 s/GB for bfloat16
    here, 3-4x memcmp), the dominant cost of differential mode on a real checkpoint."""
    exp_bits, got_bits = bits(expected), bits(found)
    nbytes = exp_bits.numel() * exp_bits.element_size()
    if _memcmp is None or got_bits.numel() * got_bits.element_size() != nbytes:
        return torch.equal(exp_bits, got_bits)
    return nbytes == 0 or _memcmp(exp_bits.data_ptr(), got_bits.data_ptr(), nbytes) == 0


def format_element(t: torch.Tensor, index: int) -> str:
    if t.dtype.itemsize == 1 and t.dtype not in PLAIN_FLOATS and not t.dtype.is_floating_point \
            and t.dtype not in (torch.bool, torch.int8, torch.uint8):
        # sub-byte dtypes (uint4, int2, ...): no kernels, so show the stored byte
        return f"0x{t.reshape(-1).view(torch.uint8)[index].item():02x}"
    value = t.reshape(-1)[index]
    if t.dtype in PLAIN_FLOATS:
        return f"{value.item():.6g}"
    if t.dtype.is_floating_point:  # FP8: the code is what matters
        code = value.reshape(1).view(torch.uint8).item()
        return f"{value.float().item():.6g} (code 0x{code:02x})"
    return str(value.item())


class TensorDiff:
    """The facts of one differing tensor pair (both on CPU, same dtype and shape)."""

    def __init__(self, expected: torch.Tensor, found: torch.Tensor, differs: torch.Tensor):
        self.expected, self.found, self.differs = expected, found, differs
        self.count = int(differs.sum())
        first = int(differs.nonzero()[0])
        self.first_index = [int(i) for i in torch.unravel_index(torch.tensor(first),
                                                                expected.shape)] \
            if expected.dim() else []
        self.expected_value = format_element(expected, first)
        self.found_value = format_element(found, first)
        self.rows: list[int] | None = None
        if expected.dim() >= 1:
            rows = differs.reshape(expected.shape[0], -1).any(dim=1).nonzero().reshape(-1)
            self.rows = [int(rows[0]), int(rows[-1]) + 1]
        flat_found = found.reshape(-1)
        poison = poison_mask(found).reshape(-1) & differs if found.dtype != torch.bool \
            else torch.zeros_like(differs)
        self.poison = poison
        self.poisoned = int(poison.sum())
        self.non_finite = 0
        self.diffs = Diffs()
        if expected.dtype.is_floating_point:
            exp_flat = expected.reshape(-1)
            self.non_finite = int((~flat_found.float().isfinite() & exp_flat.float().isfinite()
                                   & differs).sum())
            self._float_diffs(exp_flat[differs], flat_found[differs])

    def _float_diffs(self, want: torch.Tensor, got: torch.Tensor) -> None:
        diff = (got.double() - want.double()).abs()
        finite = diff[diff.isfinite()]
        self.diffs.max_abs = float(finite.max()) if finite.numel() else None
        if finite.numel():
            scale = want.double().abs()[diff.isfinite()].clamp_min(1e-30)
            self.diffs.max_rel = float((finite / scale).max())
        ulps, sign, odd = _ulp_distance(want, got)
        histogram = [[label, int(((ulps >= lo) & (ulps <= (hi or ulps.max()))).sum())]
                     for lo, hi, label in _ULP_BINS] if ulps.numel() else []
        histogram += [["sign", sign], ["nan/inf", odd]]
        self.diffs.ulp_histogram = [b for b in histogram if b[1]]
        self.diffs.max_ulp = int(ulps.max()) if ulps.numel() else None

    @property
    def rounding(self) -> bool:
        """Every difference is one unit in the last place: a rounding mode, not a bug of
        placement."""
        return self.diffs.max_ulp == 1 and all(b[0] == "1" for b in self.diffs.ulp_histogram or [])

    def counts(self) -> Counts:
        return Counts(self.count, self.expected.numel(), self.poisoned, self.non_finite)

    def mismatch_map(self, row_marks: list[Mark] | None = None,
                     col_marks: list[Mark] | None = None) -> MismatchMap | None:
        """The differing (and poisoned) share of each cell of the tensor's 2-D view."""
        if self.expected.dim() == 0 or self.expected.numel() <= 1:
            return None
        rows = self.expected.shape[0] if self.expected.dim() >= 2 else 1
        view = (rows, self.expected.numel() // rows)

        def cells(mask: torch.Tensor) -> list[list[float]]:
            grid = mask.reshape(view).float()[None, None]
            pooled = F.adaptive_avg_pool2d(grid, (min(MAP_CELLS, view[0]), min(MAP_CELLS, view[1])))
            return [[round(float(v), 3) for v in row] for row in pooled[0, 0]]
        return MismatchMap(shape=list(view), cells=cells(self.differs),
                           poison=cells(self.poison) if self.poisoned else None,
                           row_marks=row_marks or [], col_marks=col_marks or [])


def _ulp_distance(want: torch.Tensor, got: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Units in the last place between same-dtype floats of equal sign (sign-magnitude bit
    patterns ordered as integers); how many differ in sign; how many are NaN / inf."""
    w_bits, g_bits = bits(want).long(), bits(got).long()
    width = want.element_size() * 8
    sign_bit = 1 << (width - 1)
    magnitude = sign_bit - 1 if width < 64 else (1 << 63) - 1
    if width < 64:  # bits() gives signed ints; make them the unsigned pattern first
        w_bits, g_bits = w_bits & ((1 << width) - 1), g_bits & ((1 << width) - 1)
        w_neg, g_neg = w_bits >= sign_bit, g_bits >= sign_bit
    else:
        w_neg, g_neg = w_bits < 0, g_bits < 0
    odd = ~want.float().isfinite() | ~got.float().isfinite()
    w_mag, g_mag = w_bits & magnitude, g_bits & magnitude
    both_zero = (w_mag == 0) & (g_mag == 0)
    sign = (w_neg != g_neg) & ~odd & ~both_zero
    same = ~sign & ~odd
    return (w_mag[same] - g_mag[same]).abs(), int(sign.sum()), int(odd.sum())


def diff_tensors(expected: torch.Tensor, found: torch.Tensor) -> TensorDiff | None:
    """None when the two (same dtype and shape) are equal bit for bit."""
    if same_bits(expected, found):  # the common case, without a mask and its sum
        return None
    differs = bits(expected) != bits(found)
    if not bool(differs.any()):
        return None
    return TensorDiff(expected.detach().cpu(), found.detach().cpu(), differs)
