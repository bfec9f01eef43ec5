"""Sharded checkpoints (P11): each tensor comes only from the file the index assigns it; a
stray unindexed checkpoint in the directory is never read."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from generators.cases import load_cases
from .harness import check_case
from .session import current


@pytest.mark.requires("load", "sharded")
@given(data=st.data())
def test_tensors_come_from_their_indexed_shard(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, stray=True, min_shards=2,
                                tp=True), label="case")
    check_case(case, "P11 sharded index")


@pytest.mark.requires("load", "sharded", "fused_on_disk")
@given(data=st.data())
def test_a_key_fed_twice_is_refused(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, doubled=True, min_shards=2),
                     label="case")
    check_case(case, "P11 sharded index")
