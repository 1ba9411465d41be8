"""Serves a TeleDouble over HTTP on 127.0.0.1, with a control API for tests in another process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from bot.teledouble import JSON, ResponseDropped, TeleDouble, UploadedFile, attach_files

log = logging.getLogger(__name__)

_API_PATH = re.compile(r"/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)/?")
_FILE_PATH = re.compile(r"/file/bot(?P<token>[^/]+)/(?P<path>.+)")
_MAX_BODY = 64 * 1024 * 1024


class _BadHttp(Exception):
    """The peer did not speak HTTP/1.1 we understand; the connection is closed."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    def encode(self, keep_alive: bool) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        head = (
            f"HTTP/1.1 {self.status} {reason}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


def json_response(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, ensure_ascii=False).encode("utf-8"))


# ------------------------------------------------------------------------- HTTP/1.1 reading


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """One request off the connection, or None when the peer closed it cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadHttp("truncated request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _BadHttp("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _BadHttp(f"bad request line {lines[0]!r}") from exc
    headers = {}
    for line in filter(None, lines[1:]):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await _read_body(reader, headers)
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return HttpRequest(method.upper(), unquote(parts.path), query, headers, body)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = int(headers.get("content-length") or 0)
    if length > _MAX_BODY:
        raise _BadHttp("body too large")
    return await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the empty trailer section
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > _MAX_BODY:
            raise _BadHttp("body too large")


def _header_param(value: str, key: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{key}=(?:"([^"]*)"|([^;\s]+))', value, re.IGNORECASE)
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """Form fields and uploaded files of a multipart/form-data body."""
    boundary = _header_param(content_type, "boundary")
    if not boundary:
        raise ValueError("multipart body without a boundary")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    for chunk in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        part_headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.decode("utf-8").split("\r\n"))
        }
        disposition = part_headers.get("content-disposition", "")
        name = _header_param(disposition, "name") or ""
        filename = _header_param(disposition, "filename")
        if filename is None:
            fields[name] = content.decode("utf-8")
        else:
            mime = part_headers.get("content-type", "application/octet-stream")
            files[name] = UploadedFile(filename, content, mime)
    return fields, files


def request_params(request: HttpRequest) -> JSON:
    """Bot API parameters from the query string and a JSON, form or multipart body."""
    content_type = request.headers.get("content-type", "").lower()
    params: JSON = dict(request.query)
    if content_type.startswith("application/json"):
        body = json.loads(request.body or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the JSON body must be an object")
        params.update(body)
    elif content_type.startswith("application/x-www-form-urlencoded"):
        params.update(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
    elif content_type.startswith("multipart/form-data"):
        fields, files = parse_multipart(request.headers["content-type"], request.body)
        params = attach_files({**params, **fields}, files)
    return params


# ------------------------------------------------------------------------- routes


async def route(double: TeleDouble, request: HttpRequest) -> HttpResponse:
    """Dispatch one request; raises ResponseDropped when the answer must never be sent."""
    path = request.path
    if path.startswith("/_control/"):
        return await control(double, path.removeprefix("/_control/"), request)
    if match := _FILE_PATH.fullmatch(path):
        data = double.file_bytes(match["path"]) if match["token"] == double.token else None
        if data is None:
            return json_response(404, _error(404, "Not Found"))
        return HttpResponse(200, data, "application/octet-stream")
    if match := _API_PATH.fullmatch(path):
        if match["token"] != double.token:
            return json_response(401, _error(401, "Unauthorized"))
        try:
            params = request_params(request)
        except (ValueError, UnicodeDecodeError) as exc:
            return json_response(400, _error(400, f"Bad Request: {exc}"))
        status, body = await double.respond(match["method"], params)
        return json_response(status, body)
    return json_response(404, _error(404, "Not Found"))


def _error(code: int, description: str) -> JSON:
    return {"ok": False, "error_code": code, "description": description}


def _chat_arg(args: JSON) -> Any:
    chat = args["chat"] if "chat" in args else args["chat_id"]
    return chat if isinstance(chat, dict) else int(chat)


def _user_arg(args: JSON) -> Any:
    user = args["user"] if "user" in args else args["user_id"]
    return user if isinstance(user, dict) else int(user)


def _message_ref(args: JSON) -> tuple[int, int]:
    return int(args["chat_id"]), int(args["message_id"])


def _advance(double: TeleDouble, args: JSON) -> JSON:
    advance = getattr(double.clock, "advance", None)
    if advance is None:
        raise ValueError("the double's clock cannot be moved")
    advance(timedelta(seconds=float(args["seconds"])))
    return {"now": double.now().isoformat()}


def _limits(double: TeleDouble, args: JSON) -> JSON:
    if args.get("enabled") is False:
        double.disable_limits()
    else:
        keys = ("per_chat_per_s", "per_group_per_min", "global_per_s")
        kwargs: dict[str, Any] = {k: int(args[k]) for k in keys if k in args}
        double.enforce_limits(**kwargs, scale=float(args.get("scale", 1.0)))
    return {"ok": True}


def _chaos(double: TeleDouble, args: JSON) -> JSON:
    retry = args.get("retry_after", [1, 5])
    double.chaos(
        float(args.get("p429", 0)),
        float(args.get("p5xx", 0)),
        float(args.get("p_drop_response", 0)),
        retry_after=(int(retry[0]), int(retry[1])),
        seed=int(args.get("seed", 0)),
        methods=args.get("methods"),
    )
    return {"ok": True}


def _fail_next(double: TeleDouble, args: JSON) -> JSON:
    double.fail_next(
        int(args.get("n", 1)),
        args.get("kind", "500"),
        retry_after=int(args.get("retry_after", 1)),
        methods=args.get("methods"),
    )
    return {"ok": True}


async def _deliver(double: TeleDouble, args: JSON) -> JSON:
    async with httpx.AsyncClient(timeout=float(args.get("timeout", 10))) as client:
        delivered = await double.deliver_webhooks(client, attempts=int(args.get("attempts", 5)))
    return {"delivered": delivered}


def _sent(double: TeleDouble, args: JSON) -> list[JSON]:
    records = (
        double.sent + double.edits if args.get("edits") in ("1", "true", True) else double.sent
    )
    if "chat_id" in args:
        records = [r for r in records if r.chat_id == int(args["chat_id"])]
    if "method" in args:
        records = [r for r in records if r.method == args["method"]]
    return [r.to_json() for r in records]


def _done(action: Callable[[], object]) -> JSON:
    action()
    return {"ok": True}


ControlHandler = Callable[[TeleDouble, JSON], Any]
CONTROL: dict[str, ControlHandler] = {
    "health": lambda d, a: {"ok": True, "token": d.token},
    "update": lambda d, a: d.push_update(a),
    "say": lambda d, a: d.user_says(_chat_arg(a), _user_arg(a), a["text"], a.get("reply_to")),
    "press": lambda d, a: d.user_presses(_user_arg(a), _message_ref(a), a["data"]),
    "photo": lambda d, a: d.user_sends_photo(_chat_arg(a), _user_arg(a), a.get("caption")),
    "location": lambda d, a: d.user_sends_location(
        _chat_arg(a), _user_arg(a), float(a["latitude"]), float(a["longitude"])
    ),
    "edit": lambda d, a: d.user_edits({"chat": {"id": int(a["chat_id"])}, **a}, a["text"]),
    "sent": _sent,
    "messages": lambda d, a: d.messages_in(int(a["chat_id"])),
    "updates": lambda d, a: {
        "pending": d.pending_updates(),
        "confirmed_offset": d.confirmed_offset,
        "next_update_id": d.next_update_id,
        "allowed_updates": d.allowed_updates,
    },
    "stats": lambda d, a: d.stats(),
    "calls": lambda d, a: [{**c.__dict__, "at": c.at.isoformat()} for c in d.calls],
    "chaos": _chaos,
    "fail_next": _fail_next,
    "limits": _limits,
    "block": lambda d, a: _done(lambda: d.block(int(a["user_id"]))),
    "unblock": lambda d, a: _done(lambda: d.unblock(int(a["user_id"]))),
    "deactivate": lambda d, a: _done(lambda: d.deactivate(int(a["user_id"]))),
    "never_started": lambda d, a: _done(lambda: d.never_started(int(a["user_id"]))),
    "kick": lambda d, a: _done(lambda: d.kick(int(a["chat_id"]))),
    "member": lambda d, a: _done(
        lambda: d.set_member(int(a["chat_id"]), int(a["user_id"]), a["status"])
    ),
    "migrate": lambda d, a: {
        "migrate_to_chat_id": d.migrate(int(a["chat_id"]), a.get("to_chat_id"))
    },
    "advance": _advance,
    "deliver_webhooks": _deliver,
}


async def control(double: TeleDouble, name: str, request: HttpRequest) -> HttpResponse:
    """The test-side API: people's actions in, the ledger and counters out."""
    handler = CONTROL.get(name.strip("/"))
    if handler is None:
        return json_response(404, {"error": f"no control endpoint {name!r}"})
    try:
        args: JSON = dict(request.query)
        if request.body:
            body = json.loads(request.body)
            args.update(body if isinstance(body, dict) else {})
        result = handler(double, args)
        if inspect.isawaitable(result):
            result = await result
    except (KeyError, TypeError, ValueError, LookupError) as exc:
        return json_response(400, {"error": f"{type(exc).__name__}: {exc}"})
    return json_response(200, result)


# ------------------------------------------------------------------------- the server


class DoubleServer:
    """A running HTTP server for one TeleDouble; `port` is the bound port."""

    def __init__(self, double: TeleDouble, host: str):
        self.double = double
        self.host = host
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.dropped_connections = 0
        self._stopping = False

    async def start(self, port: int) -> DoubleServer:
        self._server = await asyncio.start_server(self._on_connect, self.host, port)
        return self

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For PTB's ApplicationBuilder().base_url(...); the token is appended by PTB."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    async def stop(self) -> None:
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self._stopping = False

    async def __aenter__(self) -> DoubleServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except ResponseDropped:
            # The ambiguous case: the call may have taken effect, the client gets no answer.
            self.dropped_connections += 1
            writer.transport.abort()
        except (_BadHttp, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("connection closed: %s", exc)
        except asyncio.CancelledError:
            # stop() cancels open connections (long polls); asyncio's stream callback would
            # report a cancelled handler as an error, so the cancellation ends here.
            if not self._stopping:
                raise
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if request is None:
                return
            try:
                response = await route(self.double, request)
            except ResponseDropped:
                raise
            except Exception as exc:  # a fault of the double must not hang the client
                log.exception("the Bot API double failed on %s", request.path)
                response = json_response(500, _error(500, f"Internal Server Error: {exc!r}"))
            writer.write(response.encode(request.keep_alive))
            await writer.drain()
            if not request.keep_alive:
                return


async def serve(double: TeleDouble, host: str = "127.0.0.1", port: int = 0) -> DoubleServer:
    """Start serving `double`; port 0 picks a free port (read it from `.port`). Stop with
    `await server.stop()` or `async with await serve(...)`."""
    return await DoubleServer(double, host).start(port)


async def _run(host: str, port: int, token: str) -> None:
    server = await serve(TeleDouble(token=token), host, port)
    log.info("Bot API double on %s (token %s); control API under /_control/", server.url, token)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a Telegram Bot API double over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--token", default=TeleDouble().token)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args.host, args.port, args.token))


if __name__ == "__main__":
    main()
