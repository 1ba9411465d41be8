"""The webhook endpoint: the secret checked in constant time, the update stored before 200."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import select
from starlette.responses import JSONResponse
from starlette.routing import Route

import bot.webhook as webhook_module
from bot.clock import ManualClock
from bot.webhook import SECRET_HEADER, webhook_app
from storage.tables import InboxUpdate
from storage.uow import UnitOfWorkFactory

SECRET = "s3cr3t-Token_value"
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
UPDATE = {
    "update_id": 4242,
    "message": {
        "message_id": 7,
        "date": int(T0.timestamp()),
        "chat": {"id": -1001234567890, "type": "supergroup", "title": "G"},
        "from": {"id": 5_000_000_001, "is_bot": False, "first_name": "P"},
        "text": "/report 发票开不出来",
    },
}


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.added = 0

    def __call__(self, added: int) -> None:
        self.count += 1
        self.added += added


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
async def client(uows: UnitOfWorkFactory, wakes: Wakes) -> AsyncIterator[httpx.AsyncClient]:
    app = webhook_app(uows, secret=SECRET, on_stored=wakes, clock=ManualClock(T0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as c:
        yield c


async def stored(uows: UnitOfWorkFactory) -> list[tuple[int, bool]]:
    async with uows(readonly=True) as uow:
        rows = await uow.session.exec(select(InboxUpdate.update_id, InboxUpdate.processed))
        return [tuple(r) for r in rows.all()]


@pytest.mark.parametrize(
    "headers",
    [{}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: SECRET + "x"}, {SECRET_HEADER: ""}],
    ids=["missing", "wrong", "longer", "empty"],
)
async def test_a_post_without_the_right_secret_is_refused_and_not_stored(
    client, uows, wakes, headers
):
    """RELIABILITY E9."""
    response = await client.post("/telegram", json=UPDATE, headers=headers)
    assert response.status_code == 403
    assert await stored(uows) == []
    assert wakes.count == 0


async def test_the_secret_is_compared_in_constant_time(client, monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook_module.hmac, "compare_digest", spy)
    await client.post("/telegram", json=UPDATE, headers={SECRET_HEADER: "guess"})
    assert compared == [(b"guess", SECRET.encode())]


async def test_an_update_with_the_right_secret_is_stored_before_the_answer(client, uows, wakes):
    response = await client.post("/telegram", json=UPDATE, headers={SECRET_HEADER: SECRET})
    assert response.status_code == 200
    assert await stored(uows) == [(4242, False)]  # kept, and not handled before answering
    assert wakes.count == 1
    async with uows(readonly=True) as uow:
        row = await uow.inbox.get(4242)
        assert (row.payload, row.chat_id, row.received_at) == (UPDATE, -1001234567890, T0)


async def test_a_retried_post_is_answered_and_stored_once(client, uows, wakes):
    for _ in range(3):
        response = await client.post("/telegram", json=UPDATE, headers={SECRET_HEADER: SECRET})
        assert response.status_code == 200
    assert await stored(uows) == [(4242, False)]
    assert (wakes.count, wakes.added) == (3, 1)  # told of one new update


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"message": {}}'])
async def test_a_body_that_is_not_an_update_is_a_bad_request(client, uows, body):
    response = await client.post(
        "/telegram",
        content=body,
        headers={SECRET_HEADER: SECRET, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert await stored(uows) == []


async def test_when_the_database_fails_telegram_gets_no_200_and_posts_again(
    client, uows, monkeypatch
):
    real_store = webhook_module.store

    async def failing(*args, **kwargs):
        raise OSError("database is away")

    monkeypatch.setattr(webhook_module, "store", failing)
    response = await client.post("/telegram", json=UPDATE, headers={SECRET_HEADER: SECRET})
    assert response.status_code == 503
    monkeypatch.setattr(webhook_module, "store", real_store)
    response = await client.post("/telegram", json=UPDATE, headers={SECRET_HEADER: SECRET})
    assert response.status_code == 200
    assert await stored(uows) == [(4242, False)]


async def test_only_the_configured_path_takes_updates(uows, wakes):
    app = webhook_app(uows, secret=SECRET, on_stored=wakes, path="/hook/abc")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as c:
        headers = {SECRET_HEADER: SECRET}
        assert (await c.post("/telegram", json=UPDATE, headers=headers)).status_code == 404
        assert (await c.post("/hook/abc", json=UPDATE, headers=headers)).status_code == 200


async def test_health_answers_while_the_database_does(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_the_operators_routes_are_served_beside_the_webhook(uows, wakes):
    async def unhealthy(request) -> JSONResponse:
        return JSONResponse({"status": "unhealthy", "outbox": "stuck"}, status_code=503)

    routes = [Route("/healthz", unhealthy), Route("/metrics", unhealthy)]
    app = webhook_app(uows, secret=SECRET, on_stored=wakes, routes=routes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as c:
        response = await c.get("/healthz")
        assert (await c.get("/metrics")).status_code == 503
    assert response.status_code == 503
    assert response.json()["outbox"] == "stuck"


def test_a_webhook_without_a_secret_is_refused(uows, wakes):
    with pytest.raises(ValueError, match="secret"):
        webhook_app(uows, secret="", on_stored=wakes)
