"""An in-memory Telegram Bot API server for tests and the offline simulation, and PTB's adapter."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import json
import marshal
import math
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

import httpx
from telegram.error import TimedOut
from telegram.request import BaseRequest, RequestData

from bot.clock import Clock, SystemClock
from bot.markup import HtmlParseError, parse_html, utf16_len

JSON = dict[str, Any]


def _names(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


Handler = Callable[[JSON], Any]
FaultKind = Literal["429", "500", "502", "drop_response", "lost"]

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_DATA_LIMIT = 64
RETENTION = timedelta(hours=24)
DELETE_WINDOW = timedelta(hours=48)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
    "delete the webhook first"
)
SEND_METHODS = frozenset({"sendmessage", "sendphoto", "senddocument", "sendlocation"})
EDIT_METHODS = frozenset({"editmessagetext", "editmessagecaption", "editmessagereplymarkup"})
FAULTABLE = SEND_METHODS | EDIT_METHODS | {"deletemessage", "answercallbackquery"}
# Telegram leaves these out unless a bot asks for them by name.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
CHAT_ACTIONS = _names(
    "typing upload_photo record_video upload_video record_voice upload_voice "
    "upload_document choose_sticker find_location record_video_note upload_video_note"
)
# Parameters whose wire value is a plain string; every other one arrives JSON-encoded.
STRING_PARAMS = _names(
    "text caption parse_mode callback_query_id inline_message_id url secret_token file_id "
    "action language_code photo document title description data ip_address "
    "business_connection_id message_effect_id"
)
_TRIMMED = " \t\r\n"
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_COMMAND = re.compile(r"[a-z0-9_]{1,32}")
_AUTO_ENTITIES = (
    ("bot_command", re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")),
    ("mention", re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}")),
    ("hashtag", re.compile(r"(?<![\w#])#\w*[^\W\d]\w*")),  # "#12" is not a hashtag
    ("url", re.compile(r"https?://[^\s<>\"]+")),
)
_METHOD_URL = re.compile(r"/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)/?$")
_FILE_URL = re.compile(r"/file/bot(?P<token>[^/]+)/(?P<path>.+)$")


class ApiError(Exception):
    """A Bot API error answer: error_code, description and optional response parameters."""

    def __init__(self, error_code: int, description: str, parameters: JSON | None = None):
        super().__init__(f"{error_code} {description}")
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def to_json(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


class ResponseDropped(Exception):
    """The caller never gets an answer; `delivered` tells whether the call took effect."""

    def __init__(self, delivered: bool):
        super().__init__("response dropped" if delivered else "request lost")
        self.delivered = delivered


@dataclass(frozen=True)
class UploadedFile:
    """A file that came in a multipart upload."""

    name: str
    data: bytes = field(repr=False)
    mime_type: str = "application/octet-stream"

    def to_json(self) -> JSON:
        return {"file_name": self.name, "size": len(self.data)}


@dataclass
class SentRecord:
    """One accepted outgoing call: a new message, an edit or a deletion."""

    method: str
    chat_id: int
    message_id: int
    text: str | None
    reply_markup: JSON | None
    params: JSON
    at: datetime
    response_dropped: bool = False

    def to_json(self) -> JSON:
        return {**self.__dict__, "at": self.at.isoformat()}


@dataclass(frozen=True)
class CallRecord:
    """Every call the double received, accepted or not."""

    method: str
    params: JSON
    at: datetime


@dataclass
class _Chat:
    id: int
    type: str
    title: str | None = None
    username: str | None = None
    next_message_id: int = 1
    messages: dict[int, JSON] = field(default_factory=dict)
    # messages past the double's history, marshalled: still there to edit, reply to or
    # delete, as on Telegram, but no longer objects for the collector to walk
    folded: dict[int, bytes] = field(default_factory=dict)
    kicked: bool = False
    migrated_to: int | None = None
    members: dict[int, str] = field(default_factory=dict)


@dataclass
class _Pending:
    update: JSON
    stored_at: datetime


@dataclass
class _Query:
    at: datetime
    answered: bool = False


@dataclass(frozen=True)
class _StoredFile:
    file_id: str
    file_unique_id: str
    path: str
    data: bytes


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    max_connections: int = 40
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass(frozen=True)
class Limits:
    per_chat_per_s: int = 1
    per_group_per_min: int = 20
    global_per_s: int = 30
    scale: float = 1.0  # multiplies the windows: 0.01 makes a "minute" last 0.6 s


def chat_type_for(chat_id: int) -> str:
    """Telegram's id ranges: users are positive, supergroups are -100…, basic groups the rest."""
    if chat_id > 0:
        return "private"
    return "supergroup" if chat_id <= -1_000_000_000_000 else "group"


def normalize_params(raw: Mapping[str, Any]) -> JSON:
    """Decode wire parameters (form fields are JSON-encoded except the string ones)."""
    params: JSON = {}
    for key, value in raw.items():
        if isinstance(value, str) and key not in STRING_PARAMS:
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        params[key] = value
    return params


def attach_files(params: JSON, files: Mapping[str, UploadedFile]) -> JSON:
    """Put uploaded files where the parameters point at them (attach://name, or by field name)."""
    out = dict(params)
    used = set()
    for key, value in params.items():
        if isinstance(value, str) and value.startswith("attach://"):
            name = value.removeprefix("attach://")
            if name in files:
                out[key] = files[name]
                used.add(name)
    out.update({name: f for name, f in files.items() if name not in used})
    return out


def detect_entities(text: str) -> list[JSON]:
    """The entities a Telegram client marks in what a person types: commands, mentions, tags."""
    found = []
    for kind, pattern in _AUTO_ENTITIES:
        for m in pattern.finditer(text):
            offset = utf16_len(text[: m.start()])
            found.append({"type": kind, "offset": offset, "length": utf16_len(m.group())})
    return sorted(found, key=lambda e: e["offset"])


def _copy(value: Any) -> Any:
    """A deep copy of JSON-shaped data: through marshal, three times as fast as deepcopy
    (copying messages and updates was a quarter of a send's cost here); anything marshal
    cannot take goes through deepcopy."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:
        return copy.deepcopy(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, UploadedFile):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _trim(text: str, entities: list[JSON]) -> tuple[str, list[JSON]]:
    """Telegram strips leading and trailing whitespace and moves the entities with the text."""
    body = text.strip(_TRIMMED)
    if body == text:
        return text, entities
    shift = utf16_len(text[: len(text) - len(text.lstrip(_TRIMMED))])
    size = utf16_len(body)
    kept = []
    for e in entities:
        start = max(e["offset"] - shift, 0)
        end = min(e["offset"] + e["length"] - shift, size)
        if end > start:
            kept.append({**e, "offset": start, "length": end - start})
    return body, kept


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


def _check_button(button: Any) -> None:
    if not isinstance(button, Mapping) or not isinstance(button.get("text"), str):
        raise _bad('can\'t parse inline keyboard button: Field "text" must be of type String')
    data = button.get("callback_data")
    if data is not None and not 1 <= len(str(data).encode("utf-8")) <= CALLBACK_DATA_LIMIT:
        raise _bad("BUTTON_DATA_INVALID")
    url = button.get("url")
    if url is not None and not str(url).startswith(("http://", "https://", "tg://")):
        raise _bad("BUTTON_URL_INVALID")
    if set(button) == {"text"}:
        raise _bad(
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
        )


def check_reply_markup(markup: Any) -> JSON | None:
    """Validate a reply_markup; returns what a Message echoes (only inline keyboards)."""
    if markup is None:
        return None
    if not isinstance(markup, Mapping):
        raise _bad("can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array')
    for row in rows:
        for button in row:
            _check_button(button)
    return {"inline_keyboard": _copy(rows)}


@functools.lru_cache(maxsize=1024)
def _parsed_html(text: str) -> tuple[str, str]:
    """A text's visible part and entities (as JSON, so each caller gets its own copy): the
    same card goes to every official of a department, and parsing is most of a send's cost
    here."""
    parsed = parse_html(text)
    return parsed.text, json.dumps(parsed.entities)


def parse_text(
    text: Any, parse_mode: Any, entities: Any, *, limit: int, kind: str = "message"
) -> tuple[str, list[JSON]]:
    """The visible text and entities Telegram stores for a text or caption, or an ApiError."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    mode = (parse_mode or "").lower()
    if mode == "html":
        try:
            visible, frozen = _parsed_html(text)
        except HtmlParseError as exc:
            raise _bad(f"can't parse entities: {exc}") from exc
        found = json.loads(frozen)
    elif mode in ("", "markdown", "markdownv2"):
        # Markdown is not modelled: Qunban renders HTML only, so the text is taken literally.
        visible, found = text, list(entities or [])
    else:
        raise _bad(f"unsupported parse_mode {parse_mode!r}")
    visible, found = _trim(visible, found)
    if kind == "message" and not visible:
        raise _bad("message text is empty")
    if utf16_len(visible) > limit:
        raise _bad("message is too long" if kind == "message" else "message caption is too long")
    return visible, found


class _Limiter:
    """Sliding windows for Telegram's flood limits, on the double's clock."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.per_chat: dict[int, deque[float]] = {}
        self.all: deque[float] = deque()

    def retry_after(self, chat: _Chat, now: float) -> int | None:
        lim = self.limits
        if chat.type == "private":
            window, cap = 1.0 * lim.scale, lim.per_chat_per_s
        else:
            window, cap = 60.0 * lim.scale, lim.per_group_per_min
        waits = [
            _window_wait(self.per_chat.setdefault(chat.id, deque()), window, cap, now),
            _window_wait(self.all, 1.0 * lim.scale, lim.global_per_s, now),
        ]
        worst = max((w for w in waits if w is not None), default=None)
        return None if worst is None else max(1, math.ceil(worst))

    def hit(self, chat_id: int, now: float) -> None:
        self.per_chat.setdefault(chat_id, deque()).append(now)
        self.all.append(now)


def _window_wait(hits: deque[float], window: float, cap: int, now: float) -> float | None:
    while hits and hits[0] <= now - window:
        hits.popleft()
    if len(hits) < cap:
        return None
    return hits[len(hits) - cap] + window - now


class _Faults:
    """Injected failures: a queue of next failures, and random chaos."""

    def __init__(self) -> None:
        self.queue: list[tuple[FaultKind, int, frozenset[str]]] = []
        self.p429 = self.p5xx = self.p_drop = 0.0
        self.retry_after: tuple[int, int] = (1, 5)
        self.methods: frozenset[str] = FAULTABLE
        self.rng = random.Random(0)

    def pick(self, method: str) -> tuple[FaultKind, int] | None:
        for i, (kind, retry_after, methods) in enumerate(self.queue):
            if method in methods:
                del self.queue[i]
                return kind, retry_after
        if method not in self.methods or not (self.p429 or self.p5xx or self.p_drop):
            return None
        roll = self.rng.random()
        if roll < self.p429:
            return "429", self.rng.randint(*self.retry_after)
        if roll < self.p429 + self.p5xx:
            return "500", 0
        if roll < self.p429 + self.p5xx + self.p_drop:
            return "drop_response", 0
        return None


class TeleDouble:
    """An in-memory Bot API server that behaves as Telegram documents it.

    Call it in-process with `await double.call(method, params)` or through `DoubleRequest`,
    or serve it over HTTP with `bot.teledouble_http.serve`. Dates come from the injected clock.
    """

    def __init__(
        self,
        *,
        token: str = "123456789:TEST-double-token",
        clock: Clock | Callable[[], datetime] | None = None,
        username: str = "qunban_test_bot",
        first_name: str = "Qunban",
        privacy_mode: bool = False,
        max_poll_wait: float | None = None,
        history: int | None = None,
    ):
        self.token = token
        # The most messages it keeps as objects (older ones are kept folded into bytes and
        # unfolded when edited, replied to or deleted), and roughly the most records of calls;
        # None keeps everything. A long run in the bot's own process keeps the bot's heap its
        # own.
        self.history = history
        self._kept: deque[tuple[int, int]] = deque()  # (chat, message) in the order sent
        self._clock = clock if clock is not None else SystemClock()
        head = token.split(":", 1)[0]
        self.bot_id = int(head) if head.isdigit() else 123456789
        self.bot_user: JSON = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": first_name,
            "username": username,
        }
        self.privacy_mode = privacy_mode
        self.max_poll_wait = max_poll_wait
        self.sent: list[SentRecord] = []
        self.edits: list[SentRecord] = []
        self.calls: list[CallRecord] = []
        self._in_call: tuple[JSON, JSON] = ({}, {})  # the call in hand: its parameters, recorded
        self.callback_answers: dict[str, JSON] = {}
        self.violations = 0
        self.early_retries = 0
        self.expired_updates = 0
        self.dropped_pending = 0
        self.confirmed_offset = 0
        self.allowed_updates: list[str] | None = None
        self.webhook: Webhook | None = None
        self.webhook_attempts = 0
        self._chats: dict[int, _Chat] = {}
        self._users: dict[int, JSON] = {}
        self._blocked: set[int] = set()
        self._deactivated: set[int] = set()
        self._never_started: set[int] = set()
        self._pending: list[_Pending] = []
        self._next_update_id = 1
        self._waiters: set[asyncio.Future[None]] = set()
        self._poll_generation = 0
        self._queries: dict[str, _Query] = {}
        self._next_query = 1
        self._files: dict[str, _StoredFile] = {}
        self._commands: dict[str, list[JSON]] = {}
        self._menu_buttons: dict[int | None, JSON] = {}
        self._limiter: _Limiter | None = None
        self._retry_until: dict[int, float] = {}
        self._faults = _Faults()
        self.callback_answer_window = timedelta(seconds=15)
        self.methods: dict[str, Handler] = {
            name.lower(): handler for name, handler in self._method_table().items()
        }

    # ----------------------------------------------------------------- time and identity

    @property
    def clock(self) -> Clock | Callable[[], datetime]:
        return self._clock

    def now(self) -> datetime:
        """The double's clock (aware UTC)."""
        now = self._clock.now() if hasattr(self._clock, "now") else self._clock()
        if now.tzinfo is None:
            raise ValueError("the double's clock must return aware datetimes")
        return now.astimezone(UTC)

    def _unix(self) -> int:
        return int(self.now().timestamp())

    def user(self, user: int | Mapping[str, Any]) -> JSON:
        """A User object; a mapping registers or updates the person's details."""
        if isinstance(user, Mapping):
            uid = int(user["id"])
            self._users[uid] = {**self.user(uid), **user, "id": uid}
            return dict(self._users[uid])
        uid = int(user)
        if uid == self.bot_id:
            return dict(self.bot_user)
        default = {
            "id": uid,
            "is_bot": False,
            "first_name": f"User {uid}",
            "username": f"user{uid}",
            "language_code": "zh-hans",
        }
        return dict(self._users.get(uid, default))

    def add_user(self, user_id: int, first_name: str, **details: Any) -> JSON:
        """Register a person (username, last_name, language_code …)."""
        return self.user({"id": user_id, "first_name": first_name, **details})

    def add_chat(
        self, chat_id: int, *, type: str | None = None, title: str | None = None, **extra: Any
    ) -> JSON:
        """Register a chat's details; chats are otherwise created on first use."""
        chat = self._chat(chat_id)
        chat.type = type or chat.type
        chat.title = title or chat.title
        chat.username = extra.get("username", chat.username)
        return self._chat_json(chat)

    def _chat(self, chat_id: int) -> _Chat:
        if chat_id not in self._chats:
            kind = chat_type_for(chat_id)
            title = None if kind == "private" else f"Group {chat_id}"
            self._chats[chat_id] = _Chat(chat_id, kind, title)
        return self._chats[chat_id]

    def _chat_from(self, chat: int | Mapping[str, Any]) -> _Chat:
        if isinstance(chat, Mapping):
            extra = {k: v for k, v in chat.items() if k not in ("id", "type", "title")}
            self.add_chat(int(chat["id"]), type=chat.get("type"), title=chat.get("title"), **extra)
            return self._chat(int(chat["id"]))
        return self._chat(int(chat))

    def _chat_json(self, chat: _Chat) -> JSON:
        if chat.type == "private":
            person = self.user(chat.id)
            keys = ("first_name", "last_name", "username")
            return {
                "id": chat.id,
                "type": "private",
                **{k: person[k] for k in keys if k in person},
            }
        body = {"id": chat.id, "type": chat.type, "title": chat.title}
        return body | ({"username": chat.username} if chat.username else {})

    # ----------------------------------------------------------------- what tests switch on

    def block(self, user_id: int) -> None:
        """The person blocked the bot: sends to their private chat get 403."""
        self._blocked.add(user_id)

    def unblock(self, user_id: int) -> None:
        self._blocked.discard(user_id)

    def deactivate(self, user_id: int) -> None:
        """The person deleted their account."""
        self._deactivated.add(user_id)

    def never_started(self, user_id: int) -> None:
        """The person never opened a private chat with the bot."""
        self._never_started.add(user_id)

    def kick(self, chat_id: int) -> None:
        """The bot was removed from the group."""
        self._chat(chat_id).kicked = True

    def set_member(self, chat_id: int, user_id: int, status: str) -> None:
        """What getChatMember answers: creator, administrator, member, restricted, left, kicked."""
        if status not in _MEMBER_EXTRAS:
            raise ValueError(f"unknown member status {status!r}")
        self._chat(chat_id).members[user_id] = status

    def migrate(self, chat_id: int, to_chat_id: int | None = None, *, push: bool = True) -> int:
        """Upgrade a group to a supergroup; sends to the old id then get migrate_to_chat_id."""
        new_id = to_chat_id if to_chat_id is not None else int(f"-100{abs(chat_id)}")
        old, new = self._chat(chat_id), self._chat(new_id)
        old.migrated_to, new.type, new.title = new_id, "supergroup", old.title
        if push:
            actor = self.user(self.bot_id)
            self._push_message(old, actor, {"migrate_to_chat_id": new_id})
            self._push_message(new, actor, {"migrate_from_chat_id": chat_id})
        return new_id

    def enforce_limits(
        self,
        per_chat_per_s: int = 1,
        per_group_per_min: int = 20,
        global_per_s: int = 30,
        scale: float = 1.0,
    ) -> None:
        """Answer 429 like Telegram's flood control; `scale` multiplies the time windows."""
        self._limiter = _Limiter(Limits(per_chat_per_s, per_group_per_min, global_per_s, scale))

    def disable_limits(self) -> None:
        self._limiter = None

    def fail_next(
        self,
        n: int = 1,
        kind: FaultKind = "500",
        *,
        retry_after: int = 1,
        methods: Iterable[str] | None = None,
    ) -> None:
        """The next n matching calls fail: 429, 500, 502, drop_response (done, answer lost) or
        lost (never arrived). `methods` defaults to the sending, editing and answering ones."""
        names = frozenset(m.lower() for m in methods) if methods is not None else FAULTABLE
        self._faults.queue.extend([(kind, retry_after, names)] * n)

    def chaos(
        self,
        p429: float = 0.0,
        p5xx: float = 0.0,
        p_drop_response: float = 0.0,
        *,
        retry_after: tuple[int, int] = (1, 5),
        seed: int = 0,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Fail calls at random with these probabilities; all zero turns chaos off."""
        faults = self._faults
        faults.p429, faults.p5xx, faults.p_drop = p429, p5xx, p_drop_response
        faults.retry_after, faults.rng = retry_after, random.Random(seed)
        faults.methods = frozenset(m.lower() for m in methods) if methods else FAULTABLE

    # ----------------------------------------------------------------- ledger

    def messages_in(self, chat_id: int, *, from_bot: bool | None = None) -> list[JSON]:
        """What the chat shows now (edits applied, deletions gone), oldest first."""
        chat = self._chats.get(chat_id)
        found = []
        if chat:
            every = {**{k: marshal.loads(v) for k, v in chat.folded.items()}, **chat.messages}
            found = [_copy(m) for _, m in sorted(every.items())]
        if from_bot is None:
            return found
        return [m for m in found if (m.get("from", {}).get("id") == self.bot_id) == from_bot]

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        chat = self._chats.get(chat_id)
        found = self._stored(chat, message_id)
        return _copy(found) if found else None

    def sent_to(self, chat_id: int) -> list[SentRecord]:
        return [r for r in self.sent if r.chat_id == chat_id]

    def count_duplicates(self, key: Callable[[SentRecord], Any] | None = None) -> int:
        """Messages sent again with the same content to the same chat (extra copies only)."""
        key = key or (lambda r: (r.chat_id, r.method, r.text, json.dumps(r.reply_markup)))
        seen: dict[Any, int] = {}
        for record in self.sent:
            k = key(record)
            seen[k] = seen.get(k, 0) + 1
        return sum(n - 1 for n in seen.values())

    @property
    def ambiguous_sends(self) -> int:
        """Accepted sends whose answer the caller never got."""
        return sum(r.response_dropped for r in self.sent)

    def stats(self) -> JSON:
        return {
            "sent": len(self.sent),
            "edits": len(self.edits),
            "calls": len(self.calls),
            "duplicates": self.count_duplicates(),
            "ambiguous_sends": self.ambiguous_sends,
            "violations": self.violations,
            "early_retries": self.early_retries,
            "pending_updates": len(self._pending),
            "expired_updates": self.expired_updates,
            "dropped_pending": self.dropped_pending,
            "confirmed_offset": self.confirmed_offset,
            "webhook_attempts": self.webhook_attempts,
        }

    def _record(self, into: list[SentRecord], method: str, chat_id: int, msg: JSON, params: JSON):
        text = msg.get("text", msg.get("caption"))
        markup = _copy(msg.get("reply_markup"))
        asked, recorded = self._in_call
        params = recorded if params is asked else _jsonable(params)
        into.append(
            SentRecord(method, chat_id, msg["message_id"], text, markup, params, self.now())
        )

    # ----------------------------------------------------------------- people's side

    def push_update(self, update: Mapping[str, Any]) -> JSON:
        """Queue an update; it gets the next update_id unless it carries one."""
        body = _copy(dict(update))
        if "update_id" in body:
            uid = int(body.pop("update_id"))
            self._next_update_id = max(self._next_update_id, uid + 1)
        else:
            uid = self._next_update_id
            self._next_update_id += 1
        stored = {"update_id": uid, **body}
        self._pending.append(_Pending(stored, self.now()))
        self._wake_waiters()
        return _copy(stored)

    def reset_update_ids(self, next_id: int) -> None:
        """Telegram picks a fresh (maybe lower) update_id after a week without updates."""
        self._next_update_id = next_id

    def pending_updates(self) -> list[JSON]:
        self._expire()
        return [_copy(p.update) for p in self._pending]

    @property
    def next_update_id(self) -> int:
        return self._next_update_id

    @property
    def waiting_polls(self) -> int:
        """Long polls now held open."""
        return len(self._waiters)

    def user_says(
        self,
        chat: int | Mapping[str, Any],
        user: int | Mapping[str, Any],
        text: str,
        reply_to: int | Mapping[str, Any] | None = None,
        *,
        entities: list[JSON] | None = None,
    ) -> JSON:
        """A person writes in a chat; returns the queued update (without an update_id when
        the bot's privacy mode keeps it from seeing the message)."""
        content: JSON = {"text": text}
        found = entities if entities is not None else detect_entities(text)
        if found:
            content["entities"] = found
        return self._user_message(chat, user, content, reply_to)

    def user_sends_photo(
        self,
        chat: int | Mapping[str, Any],
        user: int | Mapping[str, Any],
        caption: str | None = None,
        *,
        data: bytes = b"\xff\xd8\xff\xe0 photo \xff\xd9",
        reply_to: int | Mapping[str, Any] | None = None,
    ) -> JSON:
        """A person sends a photo (stored, so getFile and downloads work)."""
        stored = self._store_file(data, "photos", ".jpg")
        content: JSON = {"photo": _photo_sizes(stored)}
        if caption:
            content["caption"] = caption
            content["caption_entities"] = detect_entities(caption)
        return self._user_message(chat, user, content, reply_to)

    def user_sends_location(
        self,
        chat: int | Mapping[str, Any],
        user: int | Mapping[str, Any],
        latitude: float,
        longitude: float,
    ) -> JSON:
        content = {"location": {"latitude": latitude, "longitude": longitude}}
        return self._user_message(chat, user, content, None)

    def user_edits(self, message: Mapping[str, Any], text: str) -> JSON:
        """A person edits one of their text messages: an edited_message update."""
        stored = self._stored_message(message)
        stored.update(text=text, edit_date=self._unix())
        stored.pop("entities", None)
        if found := detect_entities(text):
            stored["entities"] = found
        return self.push_update({"edited_message": _copy(stored)})

    def user_presses(
        self,
        user: int | Mapping[str, Any],
        message: Mapping[str, Any] | SentRecord | tuple[int, int],
        data: str,
    ) -> JSON:
        """A person presses an inline button (any data: clients can forge it)."""
        stored = self._stored_message(message)
        query_id = f"{self.bot_id}{self._next_query:08d}"
        self._next_query += 1
        self._queries[query_id] = _Query(self.now())
        chat_id = stored["chat"]["id"]
        query = {
            "id": query_id,
            "from": self.user(user),
            "message": _copy(stored),
            "chat_instance": str(abs(chat_id * 7919 + self.bot_id) % 10**19),
            "data": data,
        }
        return self.push_update({"callback_query": query})

    def _stored_message(self, ref: Mapping[str, Any] | SentRecord | tuple[int, int]) -> JSON:
        if isinstance(ref, SentRecord):
            chat_id, message_id = ref.chat_id, ref.message_id
        elif isinstance(ref, tuple):
            chat_id, message_id = ref
        else:
            chat_id, message_id = ref["chat"]["id"], ref["message_id"]
        chat = self._chats.get(int(chat_id))
        stored = self._stored(chat, int(message_id))
        if stored is None:
            raise LookupError(f"no message {message_id} in chat {chat_id}")
        return stored

    def _user_message(
        self,
        chat: int | Mapping[str, Any],
        user: int | Mapping[str, Any],
        content: JSON,
        reply_to: int | Mapping[str, Any] | None,
    ) -> JSON:
        room = self._chat_from(chat)
        sender = self.user(user)
        if room.type == "private":
            # Writing to the bot means the person started it and does not block it.
            self._never_started.discard(room.id)
            self._blocked.discard(room.id)
        if reply_to is not None:
            ref = reply_to if isinstance(reply_to, Mapping) else (room.id, int(reply_to))
            content["reply_to_message"] = _without_reply(self._stored_message(ref))
        msg = self._new_message(room, sender, content)
        if not self._bot_sees(room, msg):
            return {"message": _copy(msg)}
        return self.push_update({"message": _copy(msg)})

    def _push_message(self, room: _Chat, sender: JSON, content: JSON) -> JSON:
        msg = self._new_message(room, sender, content)
        return self.push_update({"message": _copy(msg)})

    def _bot_sees(self, room: _Chat, msg: JSON) -> bool:
        """With privacy mode on, a group bot sees only commands, mentions and replies to it."""
        if not self.privacy_mode or room.type == "private":
            return True
        kinds = {e["type"] for e in msg.get("entities", [])}
        replied = msg.get("reply_to_message", {}).get("from", {}).get("id") == self.bot_id
        mentioned = f"@{self.bot_user['username']}" in msg.get("text", "")
        return "bot_command" in kinds or replied or mentioned

    def _new_message(self, room: _Chat, sender: JSON, content: JSON) -> JSON:
        message_id = room.next_message_id
        room.next_message_id += 1
        msg = {
            "message_id": message_id,
            "from": sender,
            "chat": self._chat_json(room),
            "date": self._unix(),
            **content,
        }
        self._keep(room, msg)
        return msg

    def _keep(self, room: _Chat, msg: JSON) -> None:
        room.messages[msg["message_id"]] = msg
        if self.history is None:
            return
        self._kept.append((room.id, msg["message_id"]))
        while len(self._kept) > self.history:
            chat_id, old = self._kept.popleft()
            if (kept := self._chats.get(chat_id)) is not None and old in kept.messages:
                kept.folded[old] = marshal.dumps(kept.messages.pop(old))

    def _stored(self, chat: _Chat | None, message_id: int) -> JSON | None:
        """The message as the chat shows it now, unfolded if it was folded away."""
        if chat is None:
            return None
        found = chat.messages.get(message_id)
        if found is None and message_id in chat.folded:
            found = marshal.loads(chat.folded.pop(message_id))
            self._keep(chat, found)
        return found

    def _store_file(self, data: bytes, folder: str, suffix: str) -> _StoredFile:
        n = len(self._files) + 1
        stored = _StoredFile(
            f"DOUBLE-{folder}-{n:06d}", f"U{n:06d}", f"{folder}/file_{n}{suffix}", data
        )
        self._files[stored.file_id] = stored
        return stored

    def file_bytes(self, path: str) -> bytes | None:
        """The content behind a getFile file_path."""
        return next((f.data for f in self._files.values() if f.path == path), None)

    # ----------------------------------------------------------------- dispatch

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, shared: bool = False
    ) -> Any:
        """Run one Bot API method; raises ApiError or ResponseDropped like the wire would.
        `shared`: the answer may share parts with the double's records (for `respond`, whose
        callers only serialize it); otherwise it is the caller's own copy."""
        name = method.lower()
        args = normalize_params(params or {})
        recorded = _jsonable(args)
        self.calls.append(CallRecord(method, recorded, self.now()))
        self._in_call = (args, recorded)  # the ledger of a send records the same parameters
        handler = self.methods.get(name)
        if handler is None:
            raise ApiError(404, "Not Found")
        fault = self._faults.pick(name)
        if fault is not None and fault[0] != "drop_response":
            self._raise_fault(fault, args)
        marks = len(self.sent), len(self.edits)
        result = await self._run(handler, args)
        if fault is not None:
            for record in self.sent[marks[0] :] + self.edits[marks[1] :]:
                record.response_dropped = True
            raise ResponseDropped(delivered=True)
        if self.history is not None and not (self._faults.queue or self._faults.p_drop):
            slack = self.history // 4 + 1  # trimmed now and then, not at every call
            for records in (self.sent, self.edits, self.calls):
                if len(records) > self.history + slack:
                    del records[: len(records) - self.history]
        return result if shared else _copy(result)

    @staticmethod
    async def _run(handler: Handler, args: JSON) -> Any:
        try:
            result = handler(args)
            return await result if inspect.isawaitable(result) else result
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # Telegram answers 400 to parameters of the wrong type rather than failing.
            raise _bad(f"invalid parameters: {type(exc).__name__}: {exc}") from exc

    async def respond(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> tuple[int, JSON]:
        """The HTTP status and JSON body Telegram would answer with: to be serialized, not
        kept or changed (it may share parts with the double's own records)."""
        try:
            result = await self.call(method, params, shared=True)
        except ApiError as exc:
            return exc.error_code, exc.to_json()
        return 200, {"ok": True, "result": result}

    def _raise_fault(self, fault: tuple[FaultKind, int], args: JSON) -> None:
        kind, retry_after = fault
        if kind == "lost":
            raise ResponseDropped(delivered=False)
        if kind == "429":
            self._note_retry_after(args.get("chat_id"), retry_after)
            raise _too_many(retry_after)
        raise ApiError(int(kind), "Bad Gateway" if kind == "502" else "Internal Server Error")

    def _note_retry_after(self, chat_id: Any, retry_after: int) -> None:
        with contextlib.suppress(TypeError, ValueError):
            self._retry_until[int(chat_id)] = self.now().timestamp() + retry_after

    def _method_table(self) -> dict[str, Handler]:
        return {
            "getMe": self._get_me,
            "logOut": _true,
            "close": _true,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendLocation": self._send_location,
            "sendChatAction": self._send_chat_action,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_callback_query,
            "getChat": self._get_chat,
            "getChatMember": self._get_chat_member,
            "getFile": self._get_file,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "setChatMenuButton": self._set_chat_menu_button,
            "getChatMenuButton": self._get_chat_menu_button,
        }

    # ----------------------------------------------------------------- getMe, updates, webhooks

    def _get_me(self, _: JSON) -> JSON:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, p: JSON) -> list[JSON]:
        if self.webhook is not None:
            raise ApiError(409, WEBHOOK_CONFLICT)
        if p.get("allowed_updates") is not None:
            self.allowed_updates = list(p["allowed_updates"])
        if p.get("offset"):
            self._confirm(int(p["offset"]))
        limit = min(max(int(p.get("limit") or 100), 1), 100)
        timeout = float(p.get("timeout") or 0)
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_waiters()  # an older long poll now ends with a Conflict, as on Telegram
        ready = self._deliverable(limit)
        if ready or timeout <= 0:
            return ready
        await self._wait_for_update(min(timeout, self.max_poll_wait or timeout))
        if generation != self._poll_generation:
            raise ApiError(409, POLL_CONFLICT)
        return self._deliverable(limit)

    def _confirm(self, offset: int) -> None:
        if offset < 0:
            # A negative offset keeps only the last -offset updates.
            dropped = self._pending[: max(len(self._pending) + offset, 0)]
            self._pending = self._pending[len(dropped) :]
            return
        self._pending = [p for p in self._pending if p.update["update_id"] >= offset]
        self.confirmed_offset = max(self.confirmed_offset, offset)

    def _deliverable(self, limit: int) -> list[JSON]:
        self._expire()
        self._pending = [p for p in self._pending if self._allowed(p.update)]
        return [_copy(p.update) for p in self._pending[:limit]]

    def _allowed(self, update: JSON) -> bool:
        kind = next((k for k in update if k != "update_id"), "")
        if self.allowed_updates:
            return kind in self.allowed_updates
        return kind not in OPT_IN_UPDATES

    def _expire(self) -> None:
        cutoff = self.now() - RETENTION
        kept = [p for p in self._pending if p.stored_at > cutoff]
        self.expired_updates += len(self._pending) - len(kept)
        self._pending = kept

    async def _wait_for_update(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.discard(waiter)

    def _wake_waiters(self) -> None:
        for waiter in list(self._waiters):
            try:
                # Thread-safe, so a push from a test thread reaches a poll on the server's loop.
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # its loop is closed
                self._waiters.discard(waiter)

    def _set_webhook(self, p: JSON) -> bool:
        url = p.get("url") or ""
        secret = p.get("secret_token")
        if secret is not None and not _SECRET.fullmatch(str(secret)):
            raise _bad("secret token contains unallowed characters")
        if url and not str(url).startswith(("https://", "http://")):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        self._drop_pending_if_asked(p)
        if p.get("allowed_updates") is not None:
            self.allowed_updates = list(p["allowed_updates"])
        max_connections = int(p.get("max_connections") or 40)
        self.webhook = Webhook(url, secret, max_connections) if url else None
        return True

    def _delete_webhook(self, p: JSON) -> bool:
        self._drop_pending_if_asked(p)
        self.webhook = None
        return True

    def _drop_pending_if_asked(self, p: JSON) -> None:
        if p.get("drop_pending_updates"):
            self.dropped_pending += len(self._pending)
            self._pending = []

    def _get_webhook_info(self, _: JSON) -> JSON:
        self._expire()
        hook = self.webhook
        info: JSON = {
            "url": hook.url if hook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }
        if hook is not None:
            info["max_connections"] = hook.max_connections
            if hook.last_error_date is not None:
                info["last_error_date"] = hook.last_error_date
                info["last_error_message"] = hook.last_error_message
        if self.allowed_updates is not None:
            info["allowed_updates"] = list(self.allowed_updates)
        return info

    async def deliver_webhooks(self, client: httpx.AsyncClient, *, attempts: int = 5) -> int:
        """POST pending updates, in order, to the webhook; each is tried `attempts` times.
        Stops at the first update that still fails; returns how many were delivered."""
        if self.webhook is None:
            return 0
        self._deliverable(100)
        delivered = 0
        while self._pending and self.webhook is not None:
            item = self._pending[0]
            if not await self._post_update(client, self.webhook, item.update, attempts):
                break
            with contextlib.suppress(ValueError):
                self._pending.remove(item)
            delivered += 1
        return delivered

    async def _post_update(
        self, client: httpx.AsyncClient, hook: Webhook, update: JSON, attempts: int
    ) -> bool:
        headers = (
            {"X-Telegram-Bot-Api-Secret-Token": hook.secret_token} if hook.secret_token else {}
        )
        for _ in range(attempts):
            self.webhook_attempts += 1
            try:
                response = await client.post(hook.url, json=update, headers=headers)
            except httpx.HTTPError as exc:
                self._webhook_failed(hook, f"Connection failed: {type(exc).__name__}")
                continue
            if 200 <= response.status_code < 300:
                return True
            status = f"{response.status_code} {response.reason_phrase}"
            self._webhook_failed(hook, f"Wrong response from the webhook: {status}")
        return False

    def _webhook_failed(self, hook: Webhook, message: str) -> None:
        hook.last_error_date = self._unix()
        hook.last_error_message = message

    # ----------------------------------------------------------------- sending

    def _target(self, p: JSON, *, new_conversation: bool) -> _Chat:
        """The chat a call addresses, after Telegram's 400/403 checks."""
        chat = self._lookup_chat(p.get("chat_id"))
        if chat.migrated_to is not None:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": chat.migrated_to},
            )
        if chat.kicked:
            raise ApiError(403, f"Forbidden: bot was kicked from the {chat.type} chat")
        if chat.type == "private":
            self._check_private(chat.id, new_conversation=new_conversation)
        return chat

    def _lookup_chat(self, chat_id: Any) -> _Chat:
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            found = [c for c in self._chats.values() if c.username == chat_id[1:]]
            if not found:
                raise _bad("chat not found")
            return found[0]
        if isinstance(chat_id, bool) or not isinstance(chat_id, int | str):
            raise _bad("chat not found")
        try:
            return self._chat(int(chat_id))
        except ValueError:
            raise _bad("chat not found") from None

    def _check_private(self, user_id: int, *, new_conversation: bool) -> None:
        if user_id in self._deactivated:
            raise ApiError(403, "Forbidden: user is deactivated")
        if user_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        if new_conversation and user_id in self._never_started:
            raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")

    def _throttle(self, chat: _Chat) -> None:
        """Flood control; records early retries even when limits are off."""
        now = self.now().timestamp()
        until = self._retry_until.get(chat.id)
        if until is not None and now < until:
            self.early_retries += 1
            if self._limiter is not None:
                raise _too_many(max(1, math.ceil(until - now)))
        if self._limiter is None:
            return
        wait = self._limiter.retry_after(chat, now)
        if wait is not None:
            self.violations += 1
            self._retry_until[chat.id] = now + wait
            raise _too_many(wait)
        self._limiter.hit(chat.id, now)

    def _reply_target(self, chat: _Chat, p: JSON) -> JSON | None:
        reply = p.get("reply_parameters") or {}
        message_id = reply.get("message_id", p.get("reply_to_message_id"))
        if message_id is None:
            return None
        allow = reply.get("allow_sending_without_reply", p.get("allow_sending_without_reply"))
        target = self._stored(chat, int(message_id))
        if target is None and not allow:
            raise _bad("message to be replied not found")
        return _without_reply(target) if target else None

    def _send(self, method: str, p: JSON, content: JSON) -> JSON:
        """Common tail of every send: markup, reply, flood control, store, ledger."""
        chat = self._target(p, new_conversation=True)
        markup = check_reply_markup(p.get("reply_markup"))
        reply = self._reply_target(chat, p)
        self._throttle(chat)
        content = {k: v for k, v in content.items() if v not in (None, [])}
        if reply:
            content["reply_to_message"] = reply
        if markup:
            content["reply_markup"] = markup
        msg = self._new_message(chat, self.user(self.bot_id), content)
        self._record(self.sent, method, chat.id, msg, p)
        return msg

    def _send_message(self, p: JSON) -> JSON:
        self._target(p, new_conversation=True)
        text, entities = parse_text(
            p.get("text"), p.get("parse_mode"), p.get("entities"), limit=TEXT_LIMIT
        )
        return self._send("sendMessage", p, {"text": text, "entities": entities})

    def _caption(self, p: JSON) -> JSON:
        caption, entities = parse_text(
            p.get("caption"),
            p.get("parse_mode"),
            p.get("caption_entities"),
            limit=CAPTION_LIMIT,
            kind="caption",
        )
        return {"caption": caption or None, "caption_entities": entities}

    def _file_param(self, value: Any, what: str, folder: str, suffix: str) -> _StoredFile:
        if isinstance(value, UploadedFile):
            return self._store_file(value.data, folder, suffix)
        if not isinstance(value, str) or not value:
            raise _bad(f"there is no {what} in the request")
        if value in self._files:
            return self._files[value]
        if value.startswith(("http://", "https://")):
            return self._store_file(b"", folder, suffix)
        raise _bad("wrong file identifier/HTTP URL specified")

    def _send_photo(self, p: JSON) -> JSON:
        self._target(p, new_conversation=True)
        caption = self._caption(p)
        stored = self._file_param(p.get("photo"), "photo", "photos", ".jpg")
        return self._send("sendPhoto", p, {"photo": _photo_sizes(stored), **caption})

    def _send_document(self, p: JSON) -> JSON:
        self._target(p, new_conversation=True)
        caption = self._caption(p)
        upload = p.get("document")
        stored = self._file_param(upload, "document", "documents", "")
        name = upload.name if isinstance(upload, UploadedFile) else stored.path.rsplit("/", 1)[-1]
        mime = upload.mime_type if isinstance(upload, UploadedFile) else "application/octet-stream"
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": name,
            "mime_type": mime,
            "file_size": len(stored.data),
        }
        return self._send("sendDocument", p, {"document": document, **caption})

    def _send_location(self, p: JSON) -> JSON:
        self._target(p, new_conversation=True)
        try:
            latitude, longitude = float(p["latitude"]), float(p["longitude"])
        except (KeyError, TypeError, ValueError):
            raise _bad("wrong latitude or longitude") from None
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise _bad("wrong latitude or longitude")
        location = {"latitude": latitude, "longitude": longitude}
        return self._send("sendLocation", p, {"location": location})

    def _send_chat_action(self, p: JSON) -> bool:
        self._target(p, new_conversation=True)
        if p.get("action") not in CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    # ----------------------------------------------------------------- editing

    def _editable(self, p: JSON) -> tuple[_Chat, JSON]:
        chat = self._target(p, new_conversation=False)
        try:
            message_id = int(p["message_id"])
        except (KeyError, TypeError, ValueError):
            raise _bad("message identifier is not specified") from None
        msg = self._stored(chat, message_id)
        if msg is None:
            raise _bad("message to edit not found")
        if msg.get("from", {}).get("id") != self.bot_id:
            raise _bad("message can't be edited")
        return chat, msg

    def _apply_edit(self, method: str, p: JSON, changes: JSON) -> JSON | bool:
        if p.get("inline_message_id"):
            return True  # inline messages are not stored; Telegram answers True for them
        chat, msg = self._editable(p)
        if method == "editMessageText" and "text" not in msg:
            raise _bad("there is no text in the message to edit")
        if method == "editMessageCaption" and not ({"photo", "document"} & msg.keys()):
            raise _bad("there is no caption in the message to edit")
        if all(msg.get(k) == (v or None) for k, v in changes.items()):
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        for key, value in changes.items():
            if value:
                msg[key] = value
            else:
                msg.pop(key, None)
        msg["edit_date"] = self._unix()
        self._record(self.edits, method, chat.id, msg, p)
        return msg

    def _edit_message_text(self, p: JSON) -> JSON | bool:
        text, entities = parse_text(
            p.get("text"), p.get("parse_mode"), p.get("entities"), limit=TEXT_LIMIT
        )
        # Telegram drops the keyboard of a message edited without one.
        markup = check_reply_markup(p.get("reply_markup"))
        changes = {"text": text, "entities": entities, "reply_markup": markup}
        return self._apply_edit("editMessageText", p, changes)

    def _edit_message_caption(self, p: JSON) -> JSON | bool:
        markup = check_reply_markup(p.get("reply_markup"))
        return self._apply_edit(
            "editMessageCaption", p, {**self._caption(p), "reply_markup": markup}
        )

    def _edit_message_reply_markup(self, p: JSON) -> JSON | bool:
        markup = check_reply_markup(p.get("reply_markup"))
        return self._apply_edit("editMessageReplyMarkup", p, {"reply_markup": markup})

    def _delete_message(self, p: JSON) -> bool:
        chat = self._target(p, new_conversation=False)
        msg = self._stored(chat, int(p.get("message_id") or 0))
        if msg is None:
            raise _bad("message to delete not found")
        if self._unix() - msg["date"] > DELETE_WINDOW.total_seconds():
            raise _bad("message can't be deleted")
        del chat.messages[msg["message_id"]]
        self._record(self.edits, "deleteMessage", chat.id, msg, p)
        return True

    def _answer_callback_query(self, p: JSON) -> bool:
        query_id = str(p.get("callback_query_id") or "")
        query = self._queries.get(query_id)
        if query is None or query.answered or self.now() - query.at > self.callback_answer_window:
            raise ApiError(400, QUERY_INVALID)
        if len(str(p.get("text") or "")) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        query.answered = True
        self.callback_answers[query_id] = _jsonable(p)
        return True

    # ----------------------------------------------------------------- chats, files, commands

    def _get_chat(self, p: JSON) -> JSON:
        chat = self._lookup_chat(p.get("chat_id"))
        if chat.kicked:
            raise ApiError(403, f"Forbidden: bot was kicked from the {chat.type} chat")
        gifts = dict.fromkeys(
            ("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription"), False
        )
        return {
            **self._chat_json(chat),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {**gifts, "gifts_from_channels": False},
        }

    def _get_chat_member(self, p: JSON) -> JSON:
        chat = self._lookup_chat(p.get("chat_id"))
        try:
            user_id = int(p["user_id"])
        except (KeyError, TypeError, ValueError):
            raise _bad("user not found") from None
        status = chat.members.get(user_id, "member")
        if user_id == self.bot_id and chat.kicked:
            status = "kicked"
        return {"status": status, "user": self.user(user_id), **_MEMBER_EXTRAS[status]}

    def _get_file(self, p: JSON) -> JSON:
        stored = self._files.get(str(p.get("file_id") or ""))
        if stored is None:
            raise _bad("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.path,
        }

    @staticmethod
    def _commands_key(p: JSON) -> str:
        scope = p.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True) + "|" + str(p.get("language_code") or "")

    def _set_my_commands(self, p: JSON) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("commands must be an array of at most 100 BotCommand")
        for command in commands:
            if not _COMMAND.fullmatch(str(command.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad("command description is empty or too long")
        self._commands[self._commands_key(p)] = _copy(commands)
        return True

    def _get_my_commands(self, p: JSON) -> list[JSON]:
        return _copy(self._commands.get(self._commands_key(p), []))

    def _delete_my_commands(self, p: JSON) -> bool:
        self._commands.pop(self._commands_key(p), None)
        return True

    def _set_chat_menu_button(self, p: JSON) -> bool:
        chat_id = p.get("chat_id")
        button = p.get("menu_button") or {"type": "default"}
        self._menu_buttons[int(chat_id) if chat_id is not None else None] = button
        return True

    def _get_chat_menu_button(self, p: JSON) -> JSON:
        chat_id = p.get("chat_id")
        key = int(chat_id) if chat_id is not None else None
        return self._menu_buttons.get(key, self._menu_buttons.get(None, {"type": "default"}))


_ADMIN_RIGHTS = _names(
    "can_manage_chat can_delete_messages can_manage_video_chats can_restrict_members "
    "can_promote_members can_change_info can_invite_users can_post_stories "
    "can_edit_stories can_delete_stories can_pin_messages"
)
_RESTRICTIONS = _names(
    "can_change_info can_invite_users can_pin_messages can_send_messages can_send_polls "
    "can_send_other_messages can_add_web_page_previews can_manage_topics can_send_audios "
    "can_send_documents can_send_photos can_send_videos can_send_video_notes "
    "can_send_voice_notes can_edit_tag can_react_to_messages"
)
_MEMBER_EXTRAS: dict[str, JSON] = {
    "creator": {"is_anonymous": False},
    "administrator": {
        "can_be_edited": False,
        "is_anonymous": False,
        **dict.fromkeys(_ADMIN_RIGHTS, True),
    },
    "member": {},
    "restricted": {"is_member": True, "until_date": 0, **dict.fromkeys(_RESTRICTIONS, False)},
    "left": {},
    "kicked": {"until_date": 0},
}


def _photo_sizes(stored: _StoredFile) -> list[JSON]:
    base = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
    return [{**base, "width": 1280, "height": 960, "file_size": len(stored.data)}]


def _without_reply(msg: JSON) -> JSON:
    """Telegram nests a replied-to message one level deep only."""
    return {k: _copy(v) for k, v in msg.items() if k != "reply_to_message"}


def _too_many(retry_after: int) -> ApiError:
    return ApiError(
        429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
    )


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _true(_: JSON) -> bool:
    return True


class DoubleRequest(BaseRequest):
    """PTB's request layer wired to a TeleDouble in-process: bytes in, bytes out, as on the wire.

    A dropped response surfaces as PTB's TimedOut, though the call did take effect.
    """

    def __init__(self, double: TeleDouble, *, read_timeout: float | None = 5.0):
        self.double = double
        self._read_timeout = read_timeout

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        """Nothing to open: the double lives in this process."""

    async def shutdown(self) -> None:
        """Nothing to close."""

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        url = unquote(url)  # PTB percent-encodes file URLs, the token's colon included
        if match := _FILE_URL.search(url):
            return self._download(match["token"], match["path"])
        match = _METHOD_URL.search(url)
        if match is None:
            return 404, _error_body(404, "Not Found")
        if match["token"] != self.double.token:
            return 401, _error_body(401, "Unauthorized")
        try:
            status, body = await self.double.respond(match["method"], request_params(request_data))
        except ResponseDropped as exc:
            raise TimedOut("Timed out: the answer never came") from exc
        return status, json.dumps(body).encode("utf-8")

    def _download(self, token: str, path: str) -> tuple[int, bytes]:
        data = self.double.file_bytes(path) if token == self.double.token else None
        return (404, _error_body(404, "Not Found")) if data is None else (200, data)


def request_params(request_data: RequestData | None) -> JSON:
    """The wire parameters of a PTB request, with uploads as UploadedFile."""
    if request_data is None:
        return {}
    files = {}
    for name, (filename, content, mime) in request_data.multipart_data.items():
        data = content if isinstance(content, bytes) else content.read()
        files[name] = UploadedFile(filename or name, data, mime or "application/octet-stream")
    return attach_files(dict(request_data.json_parameters), files)


def _error_body(code: int, description: str) -> bytes:
    return json.dumps({"ok": False, "error_code": code, "description": description}).encode()
