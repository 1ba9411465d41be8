"""Telegram's webhook as an ASGI app: check the secret, store the update, then answer 200."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bot.clock import Clock, SystemClock
from bot.inbox import store
from storage.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"
MAX_BODY = 1024 * 1024  # an update is a few kilobytes; anything near this is not Telegram


def database_health(uows: UnitOfWorkFactory) -> Route:
    """The basic `/healthz`: 200 while the database answers."""

    async def healthz(request: Request) -> Response:
        try:
            async with uows(readonly=True) as uow:
                await uow.session.exec(sa.select(1))  # type: ignore[call-overload]
        except Exception as error:
            return JSONResponse({"status": "unhealthy", "database": type(error).__name__}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return Route("/healthz", healthz, methods=["GET", "HEAD"])


def webhook_app(
    uows: UnitOfWorkFactory,
    *,
    secret: str,
    on_stored: Callable[[int], object],
    clock: Clock | None = None,
    path: str = "/telegram",
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """`POST path` takes Telegram's updates; `routes` are served beside it (the operators'
    `/healthz` and `/metrics`), and without a `/healthz` among them a database check is.

    An update is committed to the inbox before the 200: a crash after it loses nothing, and
    Telegram retries whatever got no 200 (a repeat is ignored by its update id).
    """
    if not secret:
        raise ValueError("a webhook without a secret token would take updates from anyone")
    expected = secret.encode()
    clock = clock or SystemClock()

    async def receive(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            log.warning("webhook post refused: wrong or missing secret token")
            return Response(status_code=403)
        try:
            if int(request.headers.get("content-length") or 0) > MAX_BODY:
                return Response(status_code=413)
            update = json.loads(await request.body())
        except ValueError:
            return Response(status_code=400)
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            return Response(status_code=400)
        try:
            added = await store(uows, [update], clock=clock)
        except Exception as error:
            # no 200: Telegram keeps the update and posts it again later
            log.warning("could not store update %s: %s", update["update_id"], error)
            return Response(status_code=503)
        on_stored(added)
        return Response(status_code=200)

    served = [Route(path, receive, methods=["POST"]), *routes]
    if not any(getattr(route, "path", None) == "/healthz" for route in routes):
        served.append(database_health(uows))
    return Starlette(routes=served)
