"""The unified social credit code (统一社会信用代码, GB 32100-2015) and its check character."""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
LENGTH = 18

_VALUE = {char: value for value, char in enumerate(ALPHABET)}


def check_char(first17: str) -> str:
    """The check character for the first 17 characters of a code.

    Raises ValueError when `first17` is not 17 characters of the code's alphabet.
    """
    if len(first17) != LENGTH - 1:
        raise ValueError(f"expected {LENGTH - 1} characters, got {len(first17)}")
    bad = sorted({char for char in first17 if char not in _VALUE})
    if bad:
        raise ValueError(f"characters not allowed in a credit code: {''.join(bad)}")
    total = sum(_VALUE[char] * weight for char, weight in zip(first17, WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def make_code(first17: str) -> str:
    """The full 18-character code: `first17` followed by its check character."""
    return first17 + check_char(first17)


def problem(code: str) -> str | None:
    """Why `code` is not a valid credit code, or None when it is."""
    if len(code) != LENGTH:
        return f"credit code {code} has {len(code)} characters, not {LENGTH}"
    bad = sorted({char for char in code if char not in _VALUE})
    if bad:
        return f"credit code {code} has characters outside its alphabet: {''.join(bad)}"
    if check_char(code[:-1]) != code[-1]:
        return f"credit code {code} fails its check character"
    return None


def is_valid(code: str) -> bool:
    """True when `code` is 18 characters of the alphabet and its last one checks the rest."""
    return problem(code) is None
