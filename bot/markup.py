"""Telegram-HTML helpers: escaping, UTF-16 lengths, a strict parser, splitting and truncating."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ELLIPSIS = "…"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_NUMERIC_ENTITY = re.compile(r"&#(?:([0-9]{1,8})|[xX]([0-9a-fA-F]{1,6}));")
_NAMED_ENTITY = re.compile(r"&([a-zA-Z]{1,8});")
_SIMPLE_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
}
_TAGS = {*_SIMPLE_TAGS, "span", "a", "code", "pre", "blockquote", "tg-emoji"}
_SPLIT_PREFERENCE = ("\n", " ")
_PLAIN = re.compile(r"[^&<]+")
_ATTRIBUTE = re.compile(r"\s*(?:([a-zA-Z_:-]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?|(>))")


class HtmlParseError(ValueError):
    """The text is not valid Telegram HTML; the message reads like Telegram's own."""


def escape(text: str) -> str:
    """Make any text literal in Telegram HTML; lone surrogates, unsendable, become U+FFFD."""
    text = _LONE_SURROGATE.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def clip(text: str, n: int) -> str:
    """Plain text cut to at most n UTF-16 units, ending in an ellipsis when cut."""
    if utf16_len(text) <= n:
        return text
    kept, used = [], 0
    for ch in text:
        width = utf16_len(ch)
        if used + width > n - 1:
            break
        kept.append(ch)
        used += width
    return "".join(kept).rstrip() + ELLIPSIS if n > 0 else ""


@dataclass(frozen=True)
class Token:
    """One piece of Telegram HTML: a visible character (raw may be an entity) or a tag."""

    kind: str  # "char", "open" or "close"
    raw: str
    char: str = ""
    name: str = ""
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedHtml:
    text: str
    entities: list[dict[str, Any]]


def tokens(html: str) -> list[Token]:
    """Tokenize and validate Telegram HTML strictly; raises HtmlParseError."""
    return list(_Tokenizer(html).run())


class _Tokenizer:
    def __init__(self, html: str) -> None:
        self.s = html
        self.i = 0
        self.stack: list[Token] = []

    def at(self, index: int) -> str:
        """Telegram reports positions as UTF-8 byte offsets."""
        return f"byte offset {len(self.s[:index].encode('utf-8', 'surrogatepass'))}"

    def run(self, *, runs: bool = False) -> Iterator[Token]:
        """The tokens; `runs`: plain text between tags and entities comes as one token (its
        `char` the whole run) rather than one per character."""
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "&":
                yield self.entity()
            elif ch == "<":
                yield self.close_tag() if self.s.startswith("</", self.i) else self.open_tag()
            elif runs:
                plain = _PLAIN.match(self.s, self.i)
                assert plain is not None  # it starts with a character that is neither
                self.i = plain.end()
                yield Token("char", plain.group(), plain.group())
            else:
                self.i += 1
                yield Token("char", ch, ch)
        if self.stack:
            name = self.stack[-1].name
            raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{name}"')

    def entity(self) -> Token:
        # Telegram itself keeps a stray "&" literally; we refuse it so that every reply is escaped.
        decoded = _decode_entity(self.s, self.i)
        if decoded is None:
            raise HtmlParseError(f'Unescaped "&" at {self.at(self.i)}; write "&amp;"')
        char, end = decoded
        raw, self.i = self.s[self.i : end], end
        return Token("char", raw, char)

    def open_tag(self) -> Token:
        start = self.i
        j = start + 1
        while j < len(self.s) and not self.s[j].isspace() and self.s[j] not in "<>/":
            j += 1
        name = self.s[start + 1 : j].lower()
        if name not in _TAGS:
            raise HtmlParseError(f'Unsupported start tag "{name}" at {self.at(start)}')
        attrs, end = self.attributes(j, start)
        token = Token("open", self.s[start:end], name=name, attrs=attrs)
        self.check_nesting(token, start)
        self.stack.append(token)
        self.i = end
        return token

    def attributes(self, j: int, start: int) -> tuple[dict[str, str], int]:
        attrs: dict[str, str] = {}
        while True:
            m = _ATTRIBUTE.match(self.s, j)
            if m is None:
                raise HtmlParseError(f"Unclosed start tag at {self.at(start)}")
            if m.group(3):
                return attrs, m.end()
            value = m.group(2) or ""
            if value[:1] in "\"'":
                value = value[1:-1]
            attrs[m.group(1).lower()] = self.attribute_value(value, start)
            j = m.end()

    def attribute_value(self, value: str, start: int) -> str:
        try:
            return "".join(t.char for t in _Tokenizer(value).run())
        except HtmlParseError as exc:
            raise HtmlParseError(f"Bad attribute value at {self.at(start)}: {exc}") from exc

    def check_nesting(self, token: Token, start: int) -> None:
        parent = self.stack[-1].name if self.stack else ""
        names = {t.name for t in self.stack}
        if token.name == "span" and token.attrs.get("class") != "tg-spoiler":
            raise HtmlParseError(f'Tag "span" must have class "tg-spoiler" at {self.at(start)}')
        if token.name == "tg-emoji" and not token.attrs.get("emoji-id", "").isdigit():
            raise HtmlParseError(f'Tag "tg-emoji" needs a numeric "emoji-id" at {self.at(start)}')
        nested_code = token.name == "code" and parent == "pre" and "code" not in names
        blocked = ("code" in names or "pre" in names) and not nested_code
        repeated = token.name in {"a", "blockquote", "pre"} and token.name in names
        if blocked or repeated:
            raise HtmlParseError(f'Tag "{token.name}" can\'t be nested at {self.at(start)}')

    def close_tag(self) -> Token:
        start = self.i
        end = self.s.find(">", start)
        if end < 0:
            raise HtmlParseError(f"Unclosed end tag at {self.at(start)}")
        name = self.s[start + 2 : end].strip().lower()
        if not self.stack:
            raise HtmlParseError(f'Unexpected end tag "{name}" at {self.at(start)}')
        expected = self.stack[-1].name
        if name != expected:
            raise HtmlParseError(
                f'Unmatched end tag at {self.at(start)}, expected "</{expected}>", '
                f'found "</{name}>"'
            )
        self.stack.pop()
        self.i = end + 1
        return Token("close", self.s[start : end + 1], name=name)


def _decode_entity(s: str, i: int) -> tuple[str, int] | None:
    named = _NAMED_ENTITY.match(s, i)
    if named:
        char = _NAMED_ENTITIES.get(named.group(1))
        return (char, named.end()) if char else None
    numeric = _NUMERIC_ENTITY.match(s, i)
    if not numeric:
        return None
    code = int(numeric.group(1)) if numeric.group(1) else int(numeric.group(2), 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code), numeric.end()


def parse_html(html: str) -> ParsedHtml:
    """The visible text and the message entities (UTF-16 offsets) of Telegram HTML."""
    text: list[str] = []
    entities: list[dict[str, Any]] = []
    open_at: list[tuple[Token, int]] = []
    pos = 0
    for token in _Tokenizer(html).run(runs=True):
        if token.kind == "char":
            text.append(token.char)
            pos += utf16_len(token.char)
        elif token.kind == "open":
            open_at.append((token, pos))
        else:
            opened, start = open_at.pop()
            entity = _entity_for(opened, open_at, start, pos - start)
            if entity is not None and entity["length"] > 0:
                entities.append(entity)
    _attach_code_language(entities)
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return ParsedHtml("".join(text), entities)


def _entity_for(
    tag: Token, outer: list[tuple[Token, int]], offset: int, length: int
) -> dict[str, Any] | None:
    base: dict[str, Any] = {"offset": offset, "length": length}
    name = tag.name
    if name in _SIMPLE_TAGS:
        return {"type": _SIMPLE_TAGS[name], **base}
    if name == "span":
        return {"type": "spoiler", **base}
    if name == "a":
        return {"type": "text_link", **base, "url": tag.attrs.get("href", "")}
    if name == "tg-emoji":
        return {"type": "custom_emoji", **base, "custom_emoji_id": tag.attrs["emoji-id"]}
    if name == "blockquote":
        kind = "expandable_blockquote" if "expandable" in tag.attrs else "blockquote"
        return {"type": kind, **base}
    if name == "code" and outer and outer[-1][0].name == "pre":
        language = tag.attrs.get("class", "")
        # A code block's language rides on the enclosing pre, as Telegram does it.
        return {"type": "_language", **base, "language": language.removeprefix("language-")}
    return {"type": name, **base}


def _attach_code_language(entities: list[dict[str, Any]]) -> None:
    for marker in [e for e in entities if e["type"] == "_language"]:
        entities.remove(marker)
        for pre in entities:
            inside = pre["offset"] <= marker["offset"] < pre["offset"] + pre["length"]
            if pre["type"] == "pre" and inside and marker["language"]:
                pre["language"] = marker["language"]


def visible_text(html: str) -> str:
    """The text a reader sees once the tags and entities are rendered."""
    return parse_html(html).text


def split_html(html: str, limit: int = 4096) -> list[str]:
    """Cut Telegram HTML into valid chunks of at most `limit` visible UTF-16 units each."""
    if utf16_len(html) <= limit:
        return [html]  # the markup never shows more than it is long: nothing to cut
    toks = tokens(html)
    if sum(utf16_len(t.char) for t in toks) <= limit:
        return [html]
    chunks: list[str] = []
    start = 0
    while start < len(toks):
        end = _chunk_end(toks, start, limit)
        chunk = _render(toks, start, end)
        if visible_text(chunk).strip():
            chunks.append(chunk)
        start = end
    return chunks


def _chunk_end(toks: list[Token], start: int, limit: int) -> int:
    """Index just past the last token of the chunk that begins at `start`."""
    used, i, last_char = 0, start, start
    while i < len(toks):
        width = utf16_len(toks[i].char)
        if used + width > limit:
            break
        used += width
        i += 1
        if width:
            last_char = i
    if i >= len(toks):
        return len(toks)
    # A separator early in the window would waste most of it; look only in the second half.
    floor = start + (last_char - start) // 2
    for separator in _SPLIT_PREFERENCE:
        for j in range(last_char - 1, floor, -1):
            if toks[j].char == separator:
                return j + 1
    return max(last_char, start + 1)


def _render(toks: list[Token], start: int, end: int) -> str:
    """Tokens [start, end) as HTML, reopening the tags open before and closing those still open."""
    opened: list[Token] = []
    for token in toks[:start]:
        _track(opened, token)
    parts = [t.raw for t in opened]
    for token in toks[start:end]:
        parts.append(token.raw)
        _track(opened, token)
    parts.extend(f"</{t.name}>" for t in reversed(opened))
    return "".join(parts)


def _track(opened: list[Token], token: Token) -> None:
    if token.kind == "open":
        opened.append(token)
    elif token.kind == "close":
        opened.pop()


def truncate_html(html: str, limit: int) -> str:
    """Telegram HTML shortened to at most `limit` visible UTF-16 units, ending in an ellipsis."""
    toks = tokens(html)
    if sum(utf16_len(t.char) for t in toks) <= limit:
        return html
    end = _chunk_end(toks, 0, max(limit - 1, 0))
    while end > 0 and toks[end - 1].char.isspace():
        end -= 1
    kept = [*toks[:end], Token("char", ELLIPSIS, ELLIPSIS)]
    return _render(kept, 0, len(kept))
