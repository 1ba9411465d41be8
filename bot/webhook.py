"""Telegram's webhook as an ASGI app: check the secret, store the update, then answer 200."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.clock import Clock, SystemClock
from bot.inbox import store
from storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"
MAX_BODY = 1024 * 1024  # an update is a few kilobytes; anything near this is not Telegram
HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def database_health(uows: UnitOfWorkFactory) -> HealthCheck:
    """The basic check: the database answers. Returns {"ok": bool, ...}."""

    async def check() -> dict[str, Any]:
        try:
            async with uows(readonly=True) as uow:
                await uow.session.exec(sa.select(1))  # type: ignore[call-overload]
        except Exception as error:
            return {"ok": False, "database": type(error).__name__}
        return {"ok": True, "database": "ok"}

    return check


def webhook_app(
    uows: UnitOfWorkFactory,
    *,
    secret: str,
    on_stored: Callable[[], object],
    clock: Clock | None = None,
    path: str = "/telegram",
    health: HealthCheck | None = None,
) -> Starlette:
    """`POST path` takes Telegram's updates; `GET /healthz` answers 200 while all is well.

    An update is committed to the inbox before the 200: a crash after it loses nothing, and
    Telegram retries whatever got no 200 (a repeat is ignored by its update id).
    """
    if not secret:
        raise ValueError("a webhook without a secret token would take updates from anyone")
    expected = secret.encode()
    health = health or database_health(uows)
    clock = clock or SystemClock()

    async def receive(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            log.warning("webhook post refused: wrong or missing secret token")
            return Response(status_code=403)
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return Response(status_code=413)
        try:
            update = json.loads(await request.body())
        except ValueError:
            return Response(status_code=400)
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            return Response(status_code=400)
        try:
            await store(uows, [update], clock=clock)
        except Exception as error:
            # no 200: Telegram keeps the update and posts it again later
            log.warning("could not store update %s: %s", update["update_id"], error)
            return Response(status_code=503)
        on_stored()
        return Response(status_code=200)

    async def healthz(request: Request) -> Response:
        report = await health()
        return JSONResponse(report, status_code=200 if report.get("ok") else 503)

    return Starlette(
        routes=[
            Route(path, receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
