"""Inline-button payloads: versioned, short ("t1:claim:12"), parsed strictly on arrival."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "t1"
ACTIONS = frozenset({"claim", "rate", "ticket"})
RATINGS = {"s": "satisfied", "b": "basic", "u": "unsatisfied", "n": "unsolved"}
MAX_BYTES = 64


@dataclass(frozen=True)
class ButtonData:
    action: str
    ticket: int
    arg: str | None = None


def build(action: str, ticket: int, arg: str | None = None) -> str:
    data = ":".join(x for x in (PREFIX, action, str(ticket), arg) if x is not None)
    if action not in ACTIONS or len(data.encode()) > MAX_BYTES:
        raise ValueError(f"bad button data {data!r}")
    return data


def parse(data: str | None) -> ButtonData | None:
    """The button's meaning, or None for anything forged, stale-format or malformed."""
    if not data or len(data.encode()) > MAX_BYTES:
        return None
    parts = data.split(":")
    if len(parts) not in (3, 4) or parts[0] != PREFIX or parts[1] not in ACTIONS:
        return None
    if not (parts[2].isascii() and parts[2].isdigit()) or len(parts[2]) > 12:
        return None
    arg = parts[3] if len(parts) == 4 else None
    # only what the bot itself puts on a button: a rating carries its code, nothing else does
    if (parts[1] == "rate") != (arg is not None) or (arg is not None and arg not in RATINGS):
        return None
    return ButtonData(parts[1], int(parts[2]), arg)
