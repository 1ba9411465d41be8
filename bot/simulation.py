"""The offline week: the real Application, services, scheduler and outbox over a Bot API double."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlmodel import select
from telegram import Update

from bot.app import build_application, build_services
from bot.calendar import load_calendar
from bot.clock import ManualClock
from bot.config import Settings
from bot.jobs import DIGEST_JOB, SCAN_JOB
from bot.simulate import RATING_CODES, Scenario, ScenarioError, Step
from bot.teledouble import DoubleRequest, SentRecord, TeleDouble
from storage.migrate import upgrade
from storage.seeding import load_seed
from storage.tables import ChatGroup, Person

_WEEKDAYS = {
    "zh": ["周一", "周二", "周三", "周四", "周五", "周六", "周日"],
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}
_WORDS = {
    "zh": {
        "working": "工作日",
        "off": "休息日",
        "bot": "群办",
        "dm": "私聊",
        "edit": "卡片更新",
        "photo": "图表",
        "others": "另有 {n} 条私信发给其他人",
        "end": "模拟结束",
        "summary": "工单 {t} 张 · 群消息 {g} 条 · 私信 {d} 条 · 卡片更新 {e} 次",
    },
    "en": {
        "working": "working day",
        "off": "day off",
        "bot": "Qunban",
        "dm": "private",
        "edit": "card updated",
        "photo": "chart",
        "others": "{n} more private messages to others",
        "end": "end of simulation",
        "summary": "{t} tickets · {g} group messages · {d} private messages · {e} card edits",
    },
}


class Simulation:
    """Plays a scenario: people's messages go in as updates, time moves in ticks."""

    def __init__(
        self,
        scenario: Scenario,
        settings: Settings,
        *,
        language: str,
        out: TextIO,
        charts: Path | None = None,
    ) -> None:
        self.charts = charts
        self.scenario = scenario
        self.settings = settings
        self.language = language
        self.words = _WORDS[language]
        self.out = out
        self.clock = ManualClock(scenario.start)
        self.calendar = load_calendar(settings.calendar, settings.timezone)
        self.double = TeleDouble(clock=self.clock, username="qunban_bot")
        self.people: dict[str, Person] = {}
        self.chat_names: dict[int, str] = {}
        self.groups_by_region: dict[str, int] = {}
        self.shown: set[int] = set()
        self._seen_sent = 0
        self._seen_edits = 0
        self._offset = 0
        self._day: Any = None
        self._hidden = Counter[Any]()

    async def play(self) -> None:
        await asyncio.to_thread(upgrade, self.settings.database_url)
        services = build_services(self.settings, clock=self.clock, limits=None)
        try:
            await load_seed(services.uows, self.scenario.org)
            await self._meet_people(services)
            app = build_application(
                self.settings,
                clock=self.clock,
                request=DoubleRequest(self.double),
                services=services,
                token=self.double.token,
            )
            async with app:
                await self._run(app, services)
        finally:
            await services.close()

    async def _meet_people(self, services: Any) -> None:
        async with services.uows() as uow:
            for person in (await uow.session.exec(select(Person))).all():
                if self.language == "en":
                    person.language = "en"
                self.people[person.name] = person
                self.people[str(person.telegram_id)] = person
            for group in (await uow.session.exec(select(ChatGroup))).all():
                group.language = self.language
                region = await uow.org.region(group.region_id)
                self.groups_by_region[region.code] = group.chat_id  # type: ignore[union-attr]
                self.chat_names[group.chat_id] = group.title
                self.double.add_chat(group.chat_id, type="supergroup", title=group.title)
            await uow.commit()
        for person in {p.id: p for p in self.people.values()}.values():
            lang = "en" if person.language == "en" else "zh-hans"
            self.double.add_user(person.telegram_id, person.name, language_code=lang)  # type: ignore[arg-type]
            self.chat_names[person.telegram_id] = person.name  # type: ignore[index]
        self.shown = self._shown_chats()

    def _shown_chats(self) -> set[int]:
        if not self.scenario.show:
            return set(self.chat_names)
        shown = set()
        for entry in self.scenario.show:
            if "in" in entry:
                shown.add(self.groups_by_region[str(entry["in"])])
            elif "private" in entry:
                shown.add(self._person(str(entry["private"]), None).telegram_id)  # type: ignore[arg-type]
        return shown

    async def _run(self, app: Any, services: Any) -> None:
        self._line(f"══ {self.scenario.title} ══")
        for step in self.scenario.steps:
            if step.at is not None:
                await self._advance(app, services, step.at)
            await self._do(app, services, step)
        await self._advance(app, services, self.scenario.end)
        self._flush_day()
        stats = self.double.stats()
        async with services.uows(readonly=True) as uow:
            tickets = len(await uow.tickets.listing(limit=100_000))
        groups = sum(1 for r in self.double.sent if r.chat_id < 0)
        self._line("")
        self._line(
            f"══ {self.words['end']}: "
            + self.words["summary"].format(
                t=tickets, g=groups, d=stats["sent"] - groups, e=stats["edits"]
            )
            + " ══"
        )

    async def _advance(self, app: Any, services: Any, until: datetime) -> None:
        while self.clock.now() + self.scenario.tick <= until:
            self.clock.advance(self.scenario.tick)
            await self._sweep(app, services)
        if self.clock.now() < until:
            self.clock.set(until)
            await self._sweep(app, services)

    async def _sweep(self, app: Any, services: Any) -> None:
        for name in (SCAN_JOB, DIGEST_JOB):
            for job in app.job_queue.get_jobs_by_name(name):
                await job.run(app)
        await self._deliver(app, services)

    async def _do(self, app: Any, services: Any, step: Step) -> None:
        if step.note:
            self._line(f"      » {step.note}")
            return
        person = self._person(str(step.by), step)
        if step.say is not None:
            chat = self._chat_for(step, person)
            self.double.user_says(chat, person.telegram_id, step.say)  # type: ignore[arg-type]
            self._print(chat, person.name, step.say)
        else:
            self._press(step, person)
        await self._deliver(app, services)

    def _press(self, step: Step, person: Person) -> None:
        press = step.press or {}
        number, button = int(press.get("ticket", 0)), str(press.get("button", ""))
        data = (
            f"t1:claim:{number}"
            if button == "claim"
            else f"t1:rate:{number}:{RATING_CODES.get(button, '?')}"
        )
        for record in reversed(self.double.sent):
            buttons = (record.reply_markup or {}).get("inline_keyboard", [])
            mine = record.chat_id < 0 or record.chat_id == person.telegram_id
            if mine and any(b.get("callback_data") == data for row in buttons for b in row):
                self.double.user_presses(person.telegram_id, record, data)  # type: ignore[arg-type]
                label = next(
                    b["text"] for row in buttons for b in row if b.get("callback_data") == data
                )
                self._print(record.chat_id, person.name, f"[{label}] #{number}")
                return
        raise ScenarioError(
            f"steps[{step.index}]: {person.name} sees no {button!r} button for #{number}"
        )

    async def _deliver(self, app: Any, services: Any) -> None:
        """Feed pending updates to the bot as its receiver would, then drain the outbox."""
        for _ in range(20):
            updates = await self.double.call("getUpdates", {"offset": self._offset})
            for raw in updates:
                self._offset = raw["update_id"] + 1
                await app.process_update(Update.de_json(raw, app.bot))
            await services.sender.drain(app.bot)
            if not updates:
                break
        await self._save_charts()
        self._show_new()

    async def _save_charts(self) -> None:
        """Keep the digest charts the leaders were sent, as PNG files, when asked to."""
        if self.charts is None:
            return
        for record in self.double.sent[self._seen_sent :]:
            if record.method.lower() != "sendphoto":
                continue
            message = self.double.message(record.chat_id, record.message_id) or {}
            file_id = message["photo"][-1]["file_id"]
            path = (await self.double.call("getFile", {"file_id": file_id}))["file_path"]
            moment = record.at.astimezone(self.settings.tz)
            name = f"{moment:%Y-%m-%d}-{self.chat_names.get(record.chat_id, record.chat_id)}.png"
            self.charts.mkdir(parents=True, exist_ok=True)
            (self.charts / name).write_bytes(self.double.file_bytes(path) or b"")

    def _show_new(self) -> None:
        for record in self.double.sent[self._seen_sent :]:
            self._print(record.chat_id, self.words["bot"], self._body(record), at=record.at)
        self._seen_sent = len(self.double.sent)
        for record in self.double.edits[self._seen_edits :]:
            first = record.text.splitlines()[0] if record.text else ""
            self._print(
                record.chat_id, self.words["bot"], f"✎ {self.words['edit']}: {first}", at=record.at
            )
        self._seen_edits = len(self.double.edits)

    def _body(self, record: SentRecord) -> str:
        text = record.text or ""
        if record.method.lower() == "sendphoto":
            text = f"[{self.words['photo']}] {text}"
        labels = [
            b["text"]
            for row in (record.reply_markup or {}).get("inline_keyboard", [])
            for b in row
        ]
        return text + (f"\n[{'] ['.join(labels)}]" if labels else "")

    def _print(self, chat_id: int, who: str, text: str, at: datetime | None = None) -> None:
        moment = (at or self.clock.now()).astimezone(self.settings.tz)
        self._new_day(moment)
        if chat_id not in self.shown:
            self._hidden[moment.date()] += 1
            return
        place = self.chat_names.get(chat_id, str(chat_id))
        if chat_id > 0:
            place = f"{self.words['dm']} · {place}"
        lines = text.splitlines() or [""]
        self._line(f"{moment:%H:%M} 【{place}】 {who}: {lines[0]}")
        for line in lines[1:]:
            self._line(f"                {line}")

    def _new_day(self, moment: datetime) -> None:
        if self._day == moment.date():
            return
        self._flush_day()
        self._day = moment.date()
        kind = self.words["working" if self.calendar.is_working_day(self._day) else "off"]
        weekday = _WEEKDAYS[self.language][self._day.weekday()]
        self._line("")
        self._line(f"── {self._day.isoformat()} {weekday} ({kind}) ──")

    def _flush_day(self) -> None:
        if self._day is not None and self._hidden.get(self._day):
            self._line("      (" + self.words["others"].format(n=self._hidden[self._day]) + ")")
            self._hidden[self._day] = 0

    def _person(self, name: str, step: Step | None) -> Person:
        person = self.people.get(name)
        if person is None or person.telegram_id is None:
            where = f"steps[{step.index}]: " if step else ""
            raise ScenarioError(f"{where}nobody called {name!r} in {self.scenario.org.name}")
        return person

    def _chat_for(self, step: Step, person: Person) -> int:
        if step.where == "private":
            return person.telegram_id  # type: ignore[return-value]
        chat = self.groups_by_region.get(str(step.where))
        if chat is None:
            raise ScenarioError(f"steps[{step.index}]: no group for region {step.where!r}")
        return chat

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
