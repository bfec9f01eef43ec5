"""Tying (P10): tie only when the config says so; a tied head *is* the embedding (one
storage); a checkpoint head in a tied model is ignored (or unexpected, as declared);
an untied head is loaded, and its absence reported."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from generators.cases import load_cases
from .harness import check_case
from .session import current


@pytest.mark.requires("load")
@given(data=st.data())
def test_tied_head_is_the_embedding(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, extra_keys=True,
                                drop=True), label="case")
    check_case(case, "P10 tying")
