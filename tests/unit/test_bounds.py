"""errors.within, the one bound every numeric option goes through: any number, NaN and infinities
included, comes back inside its bounds or as a one-line ArgumentError naming the option."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnet_deploy.errors import ArgumentError, within

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers())
bounds = st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-10**6, 10**6))


@given(value=numbers, low=bounds, high=bounds)
def test_within_returns_a_bounded_finite_number_or_names_the_option(value, low, high):
    try:
        result = within("--option", value, low, high)
    except ArgumentError as exc:
        message = str(exc)
        assert message.startswith(f"--option {value} ") and "\n" not in message
        assert not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high)
    else:
        assert result == value and math.isfinite(result)
        assert (low is None or result >= low) and (high is None or result <= high)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_pass_no_bound(value):
    with pytest.raises(ArgumentError, match=f"--max-error {value} is not a finite number"):
        within("--max-error", value, 0)
