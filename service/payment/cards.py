"""Card numbers are refused wherever a payment token is expected: the service never holds a PAN.

A value looks like a card number when it holds a run of 13-19 digits (any digits Unicode knows, full-width
ones too, with separators between them as card numbers are printed, typed and exported: spaces, tabs, dashes,
dots, slashes, underscores) that passes the Luhn check. The check is against a PAN sent by mistake, in
whatever format a system exported it; a run of more than 19 digits is judged as a whole (no 13-19 digit part of
it is a number by itself), and an integrator set on hiding a PAN can always encode it. The refusal names the
field, never the value, and nothing of it is stored or logged.
"""

from __future__ import annotations

import re
import unicodedata

from service.errors import ServiceError

PAN_DIGITS = range(13, 20)
# Digits with separators between them, at least 13 digits long.
_SEPARATORS = r"[ \t\-._/]"
_DIGIT_RUN = re.compile(rf"[0-9](?:{_SEPARATORS}*[0-9]){{12,}}")


class CardNumberRefused(ServiceError):
    status, code, title = 422, "card_number_refused", "A card number was sent where a payment token belongs"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _ascii_digit(char: str) -> str:
    digit = unicodedata.digit(char, None)
    return char if digit is None else str(digit)


def looks_like_card_number(value: str) -> bool:
    """Whether ``value`` holds a 13-19 digit run (separators allowed) that passes the Luhn check."""
    ascii_digits = "".join(_ascii_digit(c) for c in unicodedata.normalize("NFKC", value))
    for match in _DIGIT_RUN.finditer(ascii_digits):
        digits = re.sub(_SEPARATORS, "", match.group())
        if len(digits) in PAN_DIGITS and luhn_valid(digits):
            return True
    return False


def refuse_card_number(value: str, field: str) -> None:
    """Raises ``CardNumberRefused`` (422) when ``value`` looks like a card number; the message names ``field`` only."""
    if looks_like_card_number(value):
        raise CardNumberRefused(
            f"{field} looks like a card number (13-19 digits passing the Luhn check): send the acquirer's or "
            "network's payment token for the card instead; nothing was stored"
        )
