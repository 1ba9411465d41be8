"""Telegram-HTML helpers, checked against the strict parser the Bot API double uses."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.markup import (
    ELLIPSIS,
    HtmlParseError,
    clip,
    escape,
    parse_html,
    split_html,
    tokens,
    truncate_html,
    utf16_len,
    visible_text,
)

# What people type into reports: markup characters, CJK, emoji (outside the BMP), newlines.
REPORT_ALPHABET = st.sampled_from(list("<&>*_ \n\"'#工单停电😀👍🏽ab"))


def assert_valid_chunks(chunks: list[str], limit: int) -> list[str]:
    texts = []
    for chunk in chunks:
        text = parse_html(chunk).text  # raises if Telegram could not parse it
        assert utf16_len(text) <= limit
        chunk.encode("utf-8")  # no lone surrogate: a pair was never cut
        texts.append(text)
    return texts


# ------------------------------------------------------------------------- escaping and sizes


def test_escape_makes_markup_characters_literal() -> None:
    assert escape('<b>Tom & "Jerry"</b>') == '&lt;b&gt;Tom &amp; "Jerry"&lt;/b&gt;'


def test_escape_replaces_lone_surrogates_that_cannot_be_sent() -> None:
    assert escape("a\ud800b") == "a\ufffdb"


@given(st.text())
@settings(max_examples=2000)
def test_escaped_text_passes_the_strict_validator_and_reads_back_unchanged(text: str) -> None:
    assert parse_html(escape(text)).text == text


@given(st.text(REPORT_ALPHABET, max_size=300))
def test_escaped_report_text_has_no_entities(text: str) -> None:
    assert parse_html(escape(text)).entities == []


@pytest.mark.parametrize(
    ("text", "units"), [("", 0), ("abc", 3), ("工单", 2), ("😀", 2), ("👍🏽", 4), ("e\u0301", 2)]
)
def test_utf16_len_counts_code_units(text: str, units: int) -> None:
    assert utf16_len(text) == units


def test_clip_cuts_by_utf16_units_without_splitting_emoji() -> None:
    assert clip("short", 10) == "short"
    assert clip("工单描述很长很长", 5) == "工单描述" + ELLIPSIS
    assert clip("😀😀😀", 4) == "😀" + ELLIPSIS
    assert utf16_len(clip("a" * 100, 20)) == 20


# ------------------------------------------------------------------------- the strict validator


@pytest.mark.parametrize(
    "html",
    [
        "<b>bold</b> <strong>s</strong> <i>i</i> <em>e</em> <u>u</u> <ins>n</ins>",
        "<s>s</s> <strike>k</strike> <del>d</del>",
        '<span class="tg-spoiler">x</span> <tg-spoiler>y</tg-spoiler>',
        '<a href="https://example.com/?a=1&amp;b=2">link</a> <a href="tg://user?id=1">u</a>',
        '<code>x</code> <pre>p</pre> <pre><code class="language-python">x = 1</code></pre>',
        "<blockquote>q</blockquote> <blockquote expandable>long</blockquote>",
        '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>',
        "&lt; &gt; &amp; &quot; &#60; &#x1F600; a > b",
        "<B>upper case tags</B>",
        "<b><i><u>nested</u></i></b>",
    ],
)
def test_validator_accepts_what_telegram_documents(html: str) -> None:
    parse_html(html)


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("1 < 2", "Unsupported start tag"),
        ("<3", "Unsupported start tag"),
        ("Tom & Jerry", 'Unescaped "&"'),
        ("&nbsp;", 'Unescaped "&"'),
        ("&#0;", 'Unescaped "&"'),
        ("&lt", 'Unescaped "&"'),
        ("<br>", 'Unsupported start tag "br"'),
        ("<div>x</div>", 'Unsupported start tag "div"'),
        ("<b>open", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b>x</i>", "Unmatched end tag"),
        ("x</b>", "Unexpected end tag"),
        ("<b", "Unclosed start tag"),
        ("<b>x</b", "Unclosed end tag"),
        ("<span>x</span>", 'must have class "tg-spoiler"'),
        ("<code><b>x</b></code>", "can't be nested"),
        ("<blockquote><blockquote>x</blockquote></blockquote>", "can't be nested"),
        ('<a href="x"><a href="y">z</a></a>', "can't be nested"),
        ("<tg-emoji>x</tg-emoji>", "emoji-id"),
    ],
)
def test_validator_refuses_what_telegram_cannot_parse(html: str, reason: str) -> None:
    with pytest.raises(HtmlParseError, match=re.escape(reason)):
        parse_html(html)


def test_errors_give_utf8_byte_offsets_like_telegram() -> None:
    with pytest.raises(HtmlParseError, match="byte offset 7"):
        parse_html("工单 <x>")


def test_entities_use_utf16_offsets_and_pre_takes_the_code_language() -> None:
    parsed = parse_html('😀 <b>#12</b>\n<pre><code class="language-sql">SELECT 1</code></pre>')

    assert parsed.text == "😀 #12\nSELECT 1"
    assert parsed.entities == [
        {"type": "bold", "offset": 3, "length": 3},
        {"type": "pre", "offset": 7, "length": 8, "language": "sql"},
    ]


def test_link_urls_are_unescaped() -> None:
    [link] = parse_html('<a href="https://x.example/?a=1&amp;b=2">x</a>').entities

    assert link == {
        "type": "text_link",
        "offset": 0,
        "length": 1,
        "url": "https://x.example/?a=1&b=2",
    }


# ------------------------------------------------------------------------- splitting


def test_short_messages_are_not_split() -> None:
    assert split_html("<b>hi</b>") == ["<b>hi</b>"]


def test_a_10000_character_report_splits_into_valid_chunks_that_add_up() -> None:
    unit = "<&>*_ 企业反映停电 😀\n"
    original = (unit * (10_000 // len(unit) + 1))[:10_000]

    chunks = split_html(escape(original))
    texts = assert_valid_chunks(chunks, 4096)

    assert len(chunks) >= 3
    assert "".join(texts) == original


def test_a_10000_character_run_without_spaces_is_cut_hard_but_validly() -> None:
    original = ("<&>*_工单😀" * 1000)[:10_000]

    texts = assert_valid_chunks(split_html(escape(original)), 4096)

    assert "".join(texts) == original


def test_splits_prefer_newlines_then_spaces() -> None:
    lines = "\n".join(f"line {n:03d} words here" for n in range(30))

    chunks = split_html(lines, limit=100)

    assert all(visible_text(c).endswith("\n") for c in chunks[:-1])
    assert "".join(visible_text(c) for c in chunks) == lines


def test_split_falls_back_to_spaces() -> None:
    words = " ".join(f"word{n:03d}" for n in range(60))

    chunks = split_html(words, limit=50)

    assert all(visible_text(c).endswith(" ") for c in chunks[:-1])


def test_open_tags_are_closed_and_reopened_across_chunks() -> None:
    html = '<b>bold <a href="https://x.example">' + "link text " * 20 + "</a> tail</b>"

    chunks = split_html(html, limit=40)
    assert_valid_chunks(chunks, 40)

    assert all(c.startswith("<b>") and c.endswith("</b>") for c in chunks)
    assert chunks[1].startswith('<b><a href="https://x.example">')


def test_a_code_block_keeps_its_language_in_every_chunk() -> None:
    code = "\n".join(f"SELECT {n};" for n in range(40))
    html = f'<pre><code class="language-sql">{code}</code></pre>'

    chunks = split_html(html, limit=60)

    assert all(parse_html(c).entities[0].get("language") == "sql" for c in chunks)


def test_entities_and_surrogate_pairs_are_never_cut() -> None:
    html = escape("&" * 30) + "😀" * 30

    chunks = split_html(html, limit=7)
    texts = assert_valid_chunks(chunks, 7)

    assert "".join(texts) == "&" * 30 + "😀" * 30


@given(
    st.lists(
        st.tuples(st.sampled_from(["", "b", "i", "code", "blockquote"]), st.text(REPORT_ALPHABET)),
        max_size=12,
    ),
    st.integers(min_value=2, max_value=300),
)
@settings(max_examples=300)
def test_any_rendered_report_splits_validly(parts: list[tuple[str, str]], limit: int) -> None:
    html = "".join(f"<{tag}>{escape(t)}</{tag}>" if tag else escape(t) for tag, t in parts)
    original = "".join(t for _, t in parts)

    texts = assert_valid_chunks(split_html(html, limit), limit)

    assert re.sub(r"\s", "", "".join(texts)) == re.sub(r"\s", "", original)


def _parsed_char_by_char(html: str) -> tuple[str, list[tuple[int, int, str]]]:
    """What parse_html must give, worked out from the one-token-per-character tokenizer."""
    text, spans, opened, pos = [], [], [], 0
    for token in tokens(html):
        if token.kind == "char":
            text.append(token.char)
            pos += utf16_len(token.char)
        elif token.kind == "open":
            opened.append((token.name, pos))
        else:
            name, start = opened.pop()
            if pos > start:
                spans.append((start, pos - start, name))
    return "".join(text), sorted(spans)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "b", "i", "u", "s", "code", "blockquote", "a"]),
            st.text(REPORT_ALPHABET),
        ),
        max_size=12,
    )
)
@settings(max_examples=300)
def test_parsing_whole_runs_of_text_reads_as_parsing_each_character(
    parts: list[tuple[str, str]],
) -> None:
    def tag(name: str, body: str) -> str:
        if name == "a":
            return f'<a href="https://e.x/?q=&lt;1&gt;&amp;p=1">{escape(body)}</a>'
        return f"<{name}>{escape(body)}</{name}>" if name else escape(body)

    html = "".join(tag(name, body) for name, body in parts)
    parsed = parse_html(html)
    text, spans = _parsed_char_by_char(html)
    assert parsed.text == text
    assert sorted((e["offset"], e["length"]) for e in parsed.entities) == [
        (offset, length) for offset, length, _ in spans
    ]


# ------------------------------------------------------------------------- truncating


def test_truncate_keeps_short_html_unchanged() -> None:
    assert truncate_html("<b>ok</b>", 10) == "<b>ok</b>"


def test_truncate_ends_with_an_ellipsis_and_closes_tags() -> None:
    cut = truncate_html("<b>Power cut <i>for three days</i></b>, please help", 16)
    hard = truncate_html("<b>企业反映<i>停电已经三天</i></b>", 8)

    assert cut == "<b>Power cut <i>for…</i></b>"
    assert hard == "<b>企业反映<i>停电已…</i></b>"


@given(st.text(REPORT_ALPHABET, max_size=200), st.integers(min_value=1, max_value=120))
def test_truncate_always_yields_valid_html_within_the_limit(text: str, limit: int) -> None:
    cut = truncate_html(f"<b>{escape(text)}</b>", limit)

    assert utf16_len(parse_html(cut).text) <= limit
