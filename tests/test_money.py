from __future__ import annotations

from decimal import Decimal

import pytest

from credit_middleware.errors import InvalidAccountId, InvalidAmount
from credit_middleware.money import check_account_id, cost_to_micros, from_micros, to_micros


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (Decimal("5.0"), 5_000_000),
        (1, 1_000_000),
        ("0.001", 1000),
        ("0.000001", 1),
        (" 2.5 ", 2_500_000),
    ],
)
def test_exact_amounts_convert_exactly(value: object, micros: int) -> None:
    assert to_micros(value) == micros
    assert from_micros(micros) == Decimal(str(value).strip())


@pytest.mark.parametrize(
    "value",
    [
        0.1,  # floats are never money
        True,
        Decimal("-1"),
        0,
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        "-Infinity",
        "0.0000001",  # finer than 1 µc
        Decimal("1e30"),
        "1" * 100,
        "abc",
        "",
        None,
        [1],
        Decimal("1000000001"),  # over the largest single amount
    ],
)
def test_bad_amounts_are_refused(value: object) -> None:
    with pytest.raises(InvalidAmount):
        to_micros(value)
    assert issubclass(InvalidAmount, ValueError)


def test_costs_round_up_never_to_zero() -> None:
    assert cost_to_micros(Decimal("0.0000001")) == (1, Decimal("0.0000001"))
    assert cost_to_micros("0.0000015")[0] == 2
    assert cost_to_micros("0.001")[0] == 1000
    assert cost_to_micros(0)[0] == 0
    for bad in (Decimal("-0.1"), Decimal("NaN"), 0.5):
        with pytest.raises(InvalidAmount):
            cost_to_micros(bad)


def test_from_micros_has_no_exponent_noise() -> None:
    assert str(from_micros(10_000_000)) == "10"
    assert str(from_micros(4_999_000)) == "4.999"
    assert str(from_micros(0)) == "0"
    assert str(from_micros(1)) == "0.000001"


@pytest.mark.parametrize(
    "value", ["", "   ", "a" * 256, "a\x00b", "line\nbreak", "\x7f", 5, None, b"bytes", "\ud800"]
)
def test_bad_account_ids_are_refused(value: object) -> None:
    with pytest.raises(InvalidAccountId):
        check_account_id(value)


def test_unicode_account_ids_are_fine() -> None:
    assert check_account_id("用户-42 ✓") == "用户-42 ✓"
    assert check_account_id("a" * 255)
