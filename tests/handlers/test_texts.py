"""Every sentence the front and the ticket cards say has its Chinese, placeholders intact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file

from bot import texts
from bot.i18n import gettext
from handlers import replies
from storage.tables import Role, TicketState

ROOT = Path(__file__).resolve().parents[2]
# written the same in both languages: commands, markup and numbers only
SAME = {"/mine", "/open", "/overdue", "/digest", "/help", "/lang zh|en", "/stats [7d|30d]"}
SAME |= {"<b>{name}</b> · {role}", "{ref} {kind}"}


def _literals(path: str) -> set[str]:
    found = extract_from_file("python", ROOT / path, keywords={"_": (2,), "gettext": (2,)})
    return {message for _line, message, _comments, _context in found if isinstance(message, str)}


def messages() -> list[str]:
    found = _literals("handlers/replies.py") | _literals("bot/texts.py")
    found |= {m for pair in replies.COMMANDS.values() for m in pair}
    found |= set(replies._WORDS_HINT.values()) | set(replies._INVITE.values())
    found |= {replies.OTHER, replies.SHOW_NAME, replies.ANONYMOUS, replies.SEND, replies.CANCEL}
    found |= {"Your tickets", "Open tickets", "Overdue tickets", "That invite cannot be used."}
    found |= set(texts._REFUSALS.values()) | set(texts._EVENT_SENTENCES.values())
    found |= set(texts._RATING_WORDS.values()) | {f"role:{r.value}" for r in Role}
    found |= {f"state:{texts._STATE_WORDS[s]}" for s in TicketState}
    found |= {f"event:{kind}" for kind in texts._EVENT_SENTENCES}
    return sorted(found - SAME)


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{[^}]*\}", text))


@pytest.mark.parametrize("message", messages())
def test_there_is_chinese_for_it(message: str) -> None:
    chinese = gettext("zh", message)
    assert chinese != message
    assert _placeholders(chinese) == _placeholders(message)
    assert gettext("en", message) == message


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
