"""The byte rule (reference/accounting.py): numel x itemsize, what torch allocates, for
every dtype; never finfo / iinfo, never a dtype-name regex."""

from __future__ import annotations

import pytest
import torch

from generators.specs import ALL_DTYPES
from reference.accounting import dtype_bytes, parameter_bytes


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_bytes_are_what_torch_allocates(name):
    dtype = getattr(torch, name)
    tensor = torch.empty((3, 5), dtype=dtype)
    assert dtype_bytes(dtype, (3, 5)) == tensor.untyped_storage().nbytes(), name


def test_sub_byte_and_fp4_pairs_take_one_byte_per_element():
    assert dtype_bytes(torch.uint4, (4, 8)) == 32  # not bit-packed in a torch storage
    assert dtype_bytes(torch.int1, (16,)) == 16
    assert dtype_bytes(torch.float4_e2m1fn_x2, (4, 8)) == 32  # an element is a packed pair
    assert dtype_bytes(torch.int32, (4, 8)) == 128  # GPTQ / AWQ words count as int32


def test_parameter_bytes_counts_views_of_fused_parameters_separately():
    fused = torch.empty(12, 4, dtype=torch.bfloat16)
    state = {"q": fused[:8], "k": fused[8:10], "v": fused[10:], "zeros": torch.zeros(3, dtype=torch.int8)}
    sizes = parameter_bytes(state)
    assert sizes == {"q": 64, "k": 16, "v": 16, "zeros": 3}
    assert sizes["q"] + sizes["k"] + sizes["v"] == fused.untyped_storage().nbytes()
