"""The command menu: every entry a real command, each language its own words."""

from telegram import Bot

from bot.app import publish_menu
from bot.teledouble import DoubleRequest, TeleDouble
from handlers.replies import COMMANDS


async def test_the_menu_is_published_per_chat_kind_and_language():
    double = TeleDouble()
    bot = Bot(double.token, request=DoubleRequest(double))

    class App:  # publish_menu needs only the application's bot
        pass

    app = App()
    app.bot = bot
    async with bot:
        await publish_menu(app)  # type: ignore[arg-type]
    calls = [c.params for c in double.calls if c.method.lower() == "setmycommands"]
    assert len(calls) == 6  # (private, group) × (default, zh, en)
    by_language = {(c.get("language_code"), c["scope"]["type"]): c["commands"] for c in calls}
    english = by_language[("en", "all_private_chats")]
    assert {c["command"] for c in english} <= set(COMMANDS)
    assert all(c["description"] == COMMANDS[c["command"]][1] for c in english)
    chinese = by_language[("zh", "all_private_chats")]
    assert chinese == by_language[(None, "all_private_chats")]  # Chinese is the default
    assert all(
        zh["description"] != en["description"] for zh, en in zip(chinese, english, strict=True)
    )
