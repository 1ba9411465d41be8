"""The real `qunban run` (and `qunban webhook`) against the Bot API double over HTTP: a group
reports, sees the problem assigned, claims it by button, resolves and rates it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.receiver import ALLOWED_UPDATES
from storage.credit_code import make_code
from tests.e2e.conftest import (
    TOKEN,
    BotProcess,
    LedgerDouble,
    button,
    child_env,
    rows,
    seed,
)

pytestmark = pytest.mark.e2e

GROUP = -1001234567890
BOSS, HEAD, CLERK, MAYOR, COORD = (
    5_000_000_101,
    5_000_000_201,
    5_000_000_202,
    5_000_000_301,
    5_000_000_302,
)
SECRET = "hook-secret_0123456789"

ORG = f"""
regions:
  - {{code: baotou, name: 包头市, level: city}}
departments:
  - {{code: tax, name: 税务局, region: baotou, keywords: [税, 发票]}}
  - {{code: market, name: 市场监督管理局, region: baotou, keywords: [营业执照]}}
enterprises:
  - {{code: e001, name: 包头稀土新材料有限公司, region: baotou,
      credit_code: {make_code("91150200MA0N00001")}}}
people:
  - {{telegram_id: {BOSS}, name: 张经理, role: enterprise, enterprise: e001}}
  - {{telegram_id: {HEAD}, name: 王局长, role: official, department: tax, head: true}}
  - {{telegram_id: {CLERK}, name: 李科员, role: official, department: tax}}
  - {{telegram_id: {MAYOR}, name: 赵市长, role: leader, region: baotou}}
  - {{telegram_id: {COORD}, name: 钱协调, role: coordinator, region: baotou}}
groups:
  - {{chat_id: {GROUP}, region: baotou, title: 包头市1+10+N企业服务群}}
"""


def card_reads(double: LedgerDouble, number: int, *words: str):
    """The card, once it shows every word."""

    def check():
        card = double.card(GROUP, number)
        return card if card and all(w in card["text"] for w in words) else None

    return check


async def inbox_state(db: AsyncEngine) -> list[tuple[int, bool, bool]]:
    return await rows(db, "SELECT update_id, processed, parked FROM inboxupdate ORDER BY 1")


async def test_a_reported_problem_is_assigned_claimed_resolved_and_rated(
    double: LedgerDouble, bot_env: dict[str, str], db: AsyncEngine, tmp_path: Path
):
    await seed(db, tmp_path / "org.yaml", ORG)
    bot = await BotProcess(bot_env, tmp_path / "bot.log", "run", double=double).start()
    try:
        await double.until(lambda: double.arrivals.get("getUpdates"), what="the first poll")
        double.user_says(GROUP, BOSS, "/report 增值税发票开不出来，系统一直报错")
        card = await double.until(card_reads(double, 1, "税务局", "已交办"), what="the card")
        assert "领办" in str(card["reply_markup"])

        double.user_presses(CLERK, card, button(card, "领办"))
        card = await double.until(card_reads(double, 1, "已领办", "李科员"), what="the claim")

        double.user_says(GROUP, CLERK, "/resolve 1 已重置开票系统，可以正常开票")
        card = await double.until(card_reads(double, 1, "已办结"), what="the resolution")

        double.user_presses(BOSS, card, button(card, "满意"))
        card = await double.until(card_reads(double, 1, "已关闭", "满意"), what="the rating")
        said = [m["text"] for m in double.messages_in(GROUP, from_bot=True)]
        assert any("领办" in text and "李科员" in text for text in said[1:])

        # every update Telegram delivered was stored and handled, none parked
        await double.until(lambda: not double.pending_updates(), what="the last confirmation")
        state = await inbox_state(db)
        assert len(state) == 4
        assert all(processed and not parked for _, processed, parked in state)
        assert double.allowed_updates == list(ALLOWED_UPDATES)  # RELIABILITY A12
        port = bot_env["QUNBAN_LISTEN_PORT"]
        async with httpx.AsyncClient(timeout=10) as client:
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        assert health.status_code == 200, health.text
        assert health.json()["late"] == []
        assert "qunban_updates_received_total 4.0" in metrics
        assert "qunban_updates_handled_total 4.0" in metrics
    finally:
        code = await bot.terminate()
    assert code == 0
    log = bot.output()
    assert "Qunban is polling" in log
    assert TOKEN not in log
    assert TOKEN.split(":")[1] not in log
    assert double.dropped_pending == 0


async def test_sigterm_finishes_and_confirms_and_a_restart_reads_nothing_twice(
    double: LedgerDouble, bot_env: dict[str, str], db: AsyncEngine, tmp_path: Path
):
    """RELIABILITY A4, once: the stop confirms the stored offset before the process exits."""
    await seed(db, tmp_path / "org.yaml", ORG)
    log = tmp_path / "bot.log"
    bot = await BotProcess(bot_env, log, double=double).start()
    await double.until(lambda: double.arrivals.get("getUpdates"), what="the first poll")
    for n in range(3):
        double.user_says(GROUP, BOSS, f"/report 营业执照变更第{n}次办不下来")
    await double.until(lambda: len(double.cards_sent(GROUP)) == 3, what="three cards")
    assert await bot.terminate() == 0
    assert double.pending_updates() == []
    polls = double.arrivals["getUpdates"]
    bot = await BotProcess(bot_env, log, double=double).start()
    await double.until(lambda: double.arrivals["getUpdates"] > polls, what="the restart")
    assert await bot.terminate() == 0
    assert await rows(db, "SELECT count(*) FROM ticket") == [(3,)]
    assert len(await inbox_state(db)) == 3


async def test_a_database_without_tables_is_one_clear_line(
    double: LedgerDouble, double_server, tmp_path: Path
):
    empty = tmp_path / "empty.db"
    empty.touch()
    env = child_env(
        QUNBAN_TELEGRAM_TOKEN=TOKEN,
        QUNBAN_TELEGRAM_BASE_URL=double_server.base_url,
        QUNBAN_DATABASE_URL=f"sqlite+aiosqlite:///{empty}",
    )
    bot = await BotProcess(env, tmp_path / "bot.log").start()
    assert await bot.wait() != 0
    lines = bot.output().strip().splitlines()
    assert lines == [lines[-1]]
    assert "qunban db upgrade" in lines[-1]
    assert double.calls == []  # nothing was asked of Telegram


async def test_webhook_mode_stores_before_answering_and_refuses_a_wrong_secret(
    double: LedgerDouble, bot_env: dict[str, str], db: AsyncEngine, tmp_path: Path
):
    await seed(db, tmp_path / "org.yaml", ORG)
    port = int(bot_env["QUNBAN_LISTEN_PORT"])
    env = bot_env | {
        "QUNBAN_WEBHOOK_URL": f"http://127.0.0.1:{port}/telegram",
        "QUNBAN_WEBHOOK_SECRET": SECRET,
        "QUNBAN_LISTEN_PORT": str(port),
    }
    bot = await BotProcess(env, tmp_path / "bot.log", "webhook", double=double).start()
    try:
        await double.until(lambda: double.webhook is not None, what="setWebhook")
        assert double.webhook.secret_token == SECRET
        double.user_says(GROUP, BOSS, "/report 出口退税迟迟没有到账")
        async with httpx.AsyncClient(timeout=10) as client:
            forged = await client.post(
                f"http://127.0.0.1:{port}/telegram",
                json=double.pending_updates()[0],
                headers={"X-Telegram-Bot-Api-Secret-Token": "guess"},
            )
            assert forged.status_code == 403  # RELIABILITY E9
            assert await inbox_state(db) == []
            assert await double.deliver_webhooks(client) == 1
            card = await double.until(card_reads(double, 1, "已交办"), what="the card")
            double.user_presses(CLERK, card, button(card, "领办"))
            assert await double.deliver_webhooks(client) == 1
            await double.until(card_reads(double, 1, "已领办"), what="the claim")
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
            assert health.status_code == 200
        assert [p for _, p, _ in await inbox_state(db)] == [True, True]
    finally:
        code = await bot.terminate()
    assert code == 0
    log = bot.output()
    assert TOKEN not in log
    assert SECRET not in log
