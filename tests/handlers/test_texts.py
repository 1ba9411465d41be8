"""Every sentence Qunban says has its Chinese, placeholders, markup, commands and emoji intact.

The sentences are read from the source of bot/ and handlers/ (bot/locale/extract.py), so a new
_(lang, "…"), or a new entry of a table a call looks up, fails here until it is translated.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest

from bot import texts
from bot.i18n import gettext, ngettext
from bot.locale import extract
from storage.tables import TicketState

EXTRACTION = extract.extract()


def messages() -> list[extract.Message]:
    return sorted(EXTRACTION.messages, key=lambda m: (m, "") if isinstance(m, str) else m)


def _marks(text: str) -> Counter[str]:
    """What must survive translation: placeholders, HTML tags, /commands and emoji."""
    found = re.findall(r"\{[^}]*\}|</?[a-z]+[^>]*>|(?<![\w/])/[a-z_]+", text)
    found += [ch for ch in text if unicodedata.category(ch) == "So"]
    return Counter(found)


def test_every_call_can_be_followed_to_its_sentences() -> None:
    assert EXTRACTION.problems == []


def test_the_sentences_are_found_in_every_part_that_speaks() -> None:
    where = {path for places in EXTRACTION.messages.values() for path, _line in places}
    for part in ("bot/texts.py", "bot/texts_digest.py", "bot/deadman.py", "handlers/admin.py"):
        assert part in where
    for prefix in ("state:", "event:", "role:", "rating:", "actor:"):
        assert any(isinstance(m, str) and m.startswith(prefix) for m in EXTRACTION.messages)


def test_nothing_lacks_chinese() -> None:
    assert extract.missing(EXTRACTION, extract.read_catalog()) == []


@pytest.mark.parametrize("message", messages(), ids=str)
def test_there_is_chinese_for_it(message: extract.Message) -> None:
    if isinstance(message, tuple):
        singular, plural = message
        pairs = [(ngettext("zh", singular, plural, n), text) for n, text in enumerate(message, 1)]
        assert ngettext("en", singular, plural, 2) == plural
    else:
        pairs = [(gettext("zh", message), message)]
        assert gettext("en", message) == message
    for chinese, english in pairs:
        assert chinese != english or english in extract.SAME
        assert _marks(chinese) == _marks(english)


def test_the_state_words_are_the_ones_people_know() -> None:
    words = [texts.state_word("zh", s) for s in TicketState]
    assert words == [
        "待交办",
        "已交办",
        "已领办",
        "退单待审",
        "督办中",
        "已办结",
        "已关闭",
        "已撤回",
        "已并单",
    ]
    assert [texts.state_word("en", s) for s in TicketState] == [s.value for s in TicketState]
