"""datamodules.checks.check_int: the one integer check of the data side and the commands."""

import re

import numpy as np
import pytest

from datamodules.checks import check_int


class Count(int):
    """An int subclass that is not a bool (e.g. an IntEnum member) is an integer too."""


@pytest.mark.parametrize("value,lo,hi", [(0, 0, None), (7, 1, None), (np.int64(3), 0, 4), (np.uint8(1), 1, 2),
                                         (Count(2), 0, None)])
def test_an_integer_in_range_comes_back_as_a_python_int(value, lo, hi):
    out = check_int("n", value, lo, hi)
    assert out == value and type(out) is int


@pytest.mark.parametrize("value,lo,hi,valid", [
    (-1, 0, None, "an integer >= 0"),
    (0, 1, None, "an integer >= 1"),
    (4, 0, 4, r"an integer in \[0, 4\)"),
    (2.0, 0, None, "an integer >= 0"),
    ("3", 0, None, "an integer >= 0"),
    (True, 0, None, "an integer >= 0"),
    (np.bool_(True), 0, None, "an integer >= 0"),
    (None, 1, None, "an integer >= 1"),
])
def test_anything_else_is_refused_naming_argument_value_and_range(value, lo, hi, valid):
    with pytest.raises(ValueError, match=rf"^batch_size={re.escape(repr(value))} is invalid: expected {valid}$"):
        check_int("batch_size", value, lo, hi)


def test_the_hint_follows_the_range():
    with pytest.raises(ValueError, match=r"^hard_num_walks=0 is invalid: expected an integer >= 1 or null \(auto\)$"):
        check_int("hard_num_walks", 0, 1, hint=" or null (auto)")


def test_callers_refuse_a_bool_where_a_count_belongs():
    """make_synthetic took num_users=True as 1 before it used the shared check."""
    from datamodules.synthetic import make_synthetic

    with pytest.raises(ValueError, match="num_users=True is invalid"):
        make_synthetic(num_users=True, num_items=50, num_interactions=1000, num_communities=5)
