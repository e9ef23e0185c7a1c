"""Exact money: credits as ``Decimal`` at the API, integers of micro-credits (µc) in storage.

A float never becomes money here: it is refused, because ``0.1`` is not a tenth.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from .errors import InvalidAccountId, InvalidAmount

__all__ = [
    "MAX_AMOUNT_MICROS",
    "MAX_BALANCE_MICROS",
    "MICROS_PER_CREDIT",
    "Amount",
    "check_account_id",
    "check_key",
    "cost_to_micros",
    "from_micros",
    "to_micros",
]

MICROS_PER_CREDIT = 1_000_000
#: The largest single amount (one billion credits). Larger is a mistake, not a purchase.
MAX_AMOUNT_MICROS = 10**9 * MICROS_PER_CREDIT
#: An account never holds more than this, so sums stay far inside a signed 64-bit integer.
MAX_BALANCE_MICROS = 10**12 * MICROS_PER_CREDIT
MAX_ACCOUNT_ID_LENGTH = 255

Amount = Decimal | int | str
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _as_decimal(value: object, field: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise InvalidAmount(f"{field} must be a Decimal, int or str, not {type(value).__name__}")
    if isinstance(value, Decimal):
        dec = value
    elif isinstance(value, int):
        dec = Decimal(value)
    elif isinstance(value, str):
        if len(value) > 64:
            raise InvalidAmount(f"{field} is not a number of credits")
        try:
            dec = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidAmount(f"{field} {value!r} is not a number of credits") from None
    else:
        raise InvalidAmount(f"{field} must be a Decimal, int or str, not {type(value).__name__}")
    if not dec.is_finite():
        raise InvalidAmount(f"{field} must be finite, got {dec}")
    return dec


def to_micros(value: object, *, field: str = "amount", allow_zero: bool = False) -> int:
    """Convert credits to µc exactly; refuse anything that is not a positive whole µc amount."""
    dec = _as_decimal(value, field)
    if dec < 0 or (dec == 0 and not allow_zero):
        raise InvalidAmount(f"{field} must be positive, got {dec}")
    if abs(dec.adjusted()) > 30:
        raise InvalidAmount(f"{field} {dec} is out of range")
    scaled = dec * MICROS_PER_CREDIT
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"{field} {dec} is finer than one micro-credit (0.000001)")
    micros = int(scaled)
    if micros > MAX_AMOUNT_MICROS:
        raise InvalidAmount(
            f"{field} {dec} exceeds the largest amount, {from_micros(MAX_AMOUNT_MICROS)}"
        )
    return micros


def cost_to_micros(value: object, *, field: str = "cost") -> tuple[int, Decimal]:
    """Convert a price to µc, rounding **up**: a non-zero cost is never billed as zero.

    Returns the µc amount and the unrounded figure (for the ledger entry's metadata).
    Zero is allowed (a free call); negative, NaN and absurd values are refused.
    """
    dec = _as_decimal(value, field)
    if dec < 0:
        raise InvalidAmount(f"{field} must not be negative, got {dec}")
    if abs(dec.adjusted()) > 30 and dec != 0:
        raise InvalidAmount(f"{field} {dec} is out of range")
    micros = int((dec * MICROS_PER_CREDIT).to_integral_value(rounding=ROUND_CEILING))
    if micros > MAX_AMOUNT_MICROS:
        raise InvalidAmount(
            f"{field} {dec} exceeds the largest amount, {from_micros(MAX_AMOUNT_MICROS)}"
        )
    return micros, dec


@functools.lru_cache(maxsize=4096, typed=True)
def from_micros(micros: int) -> Decimal:
    """µc to credits, exactly and without trailing zeros (``Decimal('4.999')`` for 4_999_000).

    Remembered for the last few thousand figures (a ``Decimal`` is immutable): prices and
    balances repeat on every request."""
    dec = Decimal(micros).scaleb(-6).normalize()
    exponent = dec.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        dec = dec.quantize(Decimal(1))
    return dec


def check_account_id(account_id: object) -> str:
    """Validate an account id: a non-empty string of at most 255 printable characters, with
    no space at either end.

    Printable is ``str.isprintable()``: no character of the Unicode categories Other (``Cc``
    controls, ``Cf`` format characters such as zero-width spaces and direction overrides,
    ``Cs`` surrogates, ``Co`` private use, ``Cn`` unassigned) or Separator (``Zs`` spaces,
    ``Zl``/``Zp`` line and paragraph separators), except the ASCII space. So ``ali\u200bce``
    (which shows as ``alice``), ``admin\u202euser`` (which shows reversed) and ``a\u2028b``
    are refused, while e-mails, UUIDs, IdP subjects (``auth0|abc``, ``google-oauth2|123``) and
    names in any script are fine. The id is taken exactly as given: never trimmed or
    normalised, so one user never quietly becomes two accounts, or two users one.
    """
    if not isinstance(account_id, str):
        raise InvalidAccountId(f"account id must be a str, not {type(account_id).__name__}")
    if not account_id or not account_id.strip():
        raise InvalidAccountId("account id must not be empty")
    if len(account_id) > MAX_ACCOUNT_ID_LENGTH:
        raise InvalidAccountId(f"account id is longer than {MAX_ACCOUNT_ID_LENGTH} characters")
    if not account_id.isprintable():
        at, char = next((i, c) for i, c in enumerate(account_id) if not c.isprintable())
        raise InvalidAccountId(
            f"account id must be printable: {_named(char)} at position {at} is not (no"
            " control, invisible, direction-changing or separator characters but the space)"
        )
    if account_id[0] == " " or account_id[-1] == " ":
        raise InvalidAccountId("account id must not begin or end with a space")
    return account_id


def _named(char: str) -> str:
    """``U+200B ZERO WIDTH SPACE (Cf)``: a character named without printing it."""
    name = unicodedata.name(char, "") if not 0xD800 <= ord(char) <= 0xDFFF else ""
    return f"U+{ord(char):04X}{' ' + name if name else ''} ({unicodedata.category(char)})"


MAX_KEY_LENGTH = 255


def check_key(key: object, *, field: str = "idempotency key") -> str:
    """Validate an idempotency key: 1-255 printable characters."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{field} must be a non-empty str of at most {MAX_KEY_LENGTH} characters")
    if _CONTROL.search(key):
        raise ValueError(f"{field} must not contain control characters")
    return key
