"""Tracking (P6): reported missing == parameters no key covered, exactly; unexpected keys
reported; never vacuous: a deliberately dropped tensor (a single bias) is always caught."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from generators.cases import load_cases
from .compare import Divergence
from .harness import check_case, fail_on
from .session import current


@pytest.mark.requires("load", "track")
@given(data=st.data())
def test_missing_weights_reported_exactly(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, drop=True, track=False,
                                extras=True, meta=True), label="case")
    expected, found = check_case(case, "P6 tracking")
    # Never vacuous: the reference itself must see every dropped key.
    if case.plan.dropped and expected.result is not None and not expected.result.missing:
        fail_on([Divergence("names", "missing", "reference reports nothing missing although "
                            f"{case.plan.dropped} were dropped")], "P6 tracking", case)


@pytest.mark.requires("load", "track")
@given(data=st.data())
def test_tracking_on_raises_on_missing(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, drop=True, track=True,
                                extras=True), label="case")
    check_case(case, "P6 tracking")


@pytest.mark.requires("load", "strict")
@given(data=st.data())
def test_unexpected_keys_reported(data):
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, extra_keys=True),
                     label="case")
    check_case(case, "P6 unexpected keys")


@pytest.mark.requires("load", "strict")
@given(data=st.data())
def test_strict_raises_on_missing_and_unexpected(data):
    """strict as torch's load_state_dict(strict=True): a dropped weight or an unknown key is
    an error (naming it), unless the loader declares strict_scope=unexpected."""
    run = current()
    case = data.draw(load_cases(run.capabilities, support=run.support, device=run.device, drop=True,
                                extra_keys=True, strict=True, track=False), label="case")
    check_case(case, "P6 strict")
