"""Errors a person can be told about: each carries a code and the facts to word it."""

from __future__ import annotations

from typing import Any


class QunbanError(Exception):
    """Base of every refusal and every domain error."""

    code = "error"

    def __init__(self, code: str | None = None, **params: Any) -> None:
        self.code = code or type(self).code
        self.params = params
        super().__init__(f"{self.code} {params}" if params else self.code)


class TicketError(QunbanError):
    code = "ticket_error"


class TicketNotFoundError(TicketError):
    """Unknown, or not visible to the person asking: the two look the same from outside."""

    code = "not_found"


class InvalidTransitionError(TicketError):
    """The workflow refuses this event in this state, by this person."""

    code = "refused"


class NotRegisteredError(QunbanError):
    code = "not_registered"


class UnboundGroupError(QunbanError):
    code = "unbound_group"


class UsageError(QunbanError):
    code = "usage"


class RateLimitedError(QunbanError):
    code = "rate_limited"


class InviteError(QunbanError):
    """An invite that cannot be redeemed or made: unknown, used, expired, a bad scope."""

    code = "invite"


class LeadersOnlyError(QunbanError):
    """Digests, rankings and records are for leaders (and admins) only."""

    code = "leaders_only"
