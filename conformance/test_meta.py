"""Meta initialisation (P8, seed 000): no device move of a meta module before loading; the
move after loading changes device only, never dtype; no tensor left on meta; buffers not
in the checkpoint equal their constructor values."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from generators.cases import load_cases
from .compare import Divergence
from .harness import check_case, fail_on
from .session import current


@pytest.mark.requires("load", "meta_init")
@given(data=st.data())
def test_meta_initialised_model_loads_like_eager(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, meta=True, extras=True,
                                dtype_override=True), label="case")
    expected, found = check_case(case, "P8 meta init")
    if found.result is not None and not found.result.buffers:
        fail_on([Divergence("buffer", "buffers", "candidate claims meta_init but reports no "
                            "non-persistent buffers, so their values cannot be checked")],
                "P8 meta init", case)


@pytest.mark.requires("load", "meta_submodule")
@given(data=st.data())
def test_meta_submodule_materialised_after_load(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, meta=True), label="case")
    check_case(case, "P8 meta submodule")
