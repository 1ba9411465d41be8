"""What the scheduler says, as Telegram HTML: nudges, the digest, the ranking and the record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from bot import callback_data
from bot.i18n import gettext
from bot.markup import clip, escape
from bot.texts import local, rating_word, state_word, ticket_ref

if TYPE_CHECKING:
    from bot.services.digests import DepartmentFigures, Digest, OverdueItem, Rate
    from bot.services.records import Record

_OPEN_ORDER = ("reported", "assigned", "claimed", "returned", "supervised", "resolved")
OVERDUE_SHOWN = 15


def _(lang: str, message: str, **params: Any) -> str:
    text = gettext(lang, message)
    return text.format(**params) if params else text


def span(lang: str, working: timedelta, day_length: timedelta) -> str:
    """Working time as working days and hours ("2d 3h"), or hours and minutes when short."""
    minutes = int(working.total_seconds() // 60)
    per_day = max(int(day_length.total_seconds() // 60), 1)
    days, rest = divmod(minutes, per_day)
    hours, mins = divmod(rest, 60)
    if days:
        return _(lang, "{d}d {h}h", d=days, h=hours)
    if hours:
        return _(lang, "{h}h {m}m", h=hours, m=mins) if mins else _(lang, "{h}h", h=hours)
    return _(lang, "{m}m", m=mins)


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def mention(telegram_id: int, name: str) -> str:
    return f'<a href="tg://user?id={int(telegram_id)}">{escape(name)}</a>'


# ---- nudges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NudgeFacts:
    """What a nudge says about its ticket."""

    rung: str
    number: int
    summary: str
    department: str | None
    claimant: str | None
    waited: timedelta
    day_length: timedelta
    due_at: datetime | None
    resolved_at: datetime | None
    tz: tzinfo


_NUDGES = {
    "unassigned": "⏰ {ref} has waited {wait} for a department: {summary}\n"
    "Assign it: /assign {number} DEPT",
    "unclaimed": "⏰ {ref} is with {department} and nobody has claimed it for {wait}: {summary}\n"
    "Claim it: /claim {number}",
    "idle": "⏰ {ref}, which you claimed, has had no progress for {wait}: {summary}\n"
    "Report progress (/progress {number} …) or resolve it (/resolve {number} …).",
    "idle_head": "⏰ {ref} in your department, held by {claimant}, "
    "has had no progress for {wait}: {summary}",
    "overdue": "⚠️ {ref} ({department}, {claimant}) passed its due time {due} "
    "and is now under supervision: {summary}",
    "escalate": "⚠️ {ref} ({department}, {claimant}) is still idle {wait} "
    "after supervision: {summary}",
    "rate_invite": "{ref} was resolved on {resolved}. Please rate the result: {summary}",
}


def nudge(lang: str, facts: NudgeFacts) -> str:
    """A reminder or an escalation about one ticket."""
    return _(
        lang,
        _NUDGES[facts.rung],
        ref=f"<b>{ticket_ref(facts.number)}</b>",
        number=facts.number,
        summary=escape(clip(facts.summary, 120)),
        department=escape(facts.department or "—"),
        claimant=escape(facts.claimant or "—"),
        wait=span(lang, facts.waited, facts.day_length),
        due=local(facts.due_at, facts.tz),
        resolved=local(facts.resolved_at, facts.tz, "%Y-%m-%d"),
    )


def nudge_in_group(lang: str, facts: NudgeFacts, people: Sequence[tuple[int, str]]) -> str:
    """The same reminder in the ticket's group, mentioning the people it is for."""
    names = " ".join(mention(telegram_id, name) for telegram_id, name in people)
    return f"{names}\n{nudge(lang, facts)}"


def claim_buttons(lang: str, number: int) -> list[list[dict[str, str]]]:
    return [
        [{"text": _(lang, "Claim 领办"), "callback_data": callback_data.build("claim", number)}]
    ]


# ---- the digest -----------------------------------------------------------------------------


def _rate(rate: Rate) -> str:
    return f"{percent(rate.value)} ({rate.hit}/{rate.total})" if rate.total else "—"


def department_line(lang: str, row: DepartmentFigures) -> str:
    """One department of the ranking: tier, the three rates and what it owes."""
    head = f"{row.rank}. <b>{escape(row.name)}</b> · {row.tier}"
    parts = [
        _(lang, "response {rate}", rate=_rate(row.response)),
        _(lang, "resolution {rate}", rate=_rate(row.resolution)),
        _(lang, "satisfaction {rate}", rate=_rate(row.satisfaction)),
    ]
    extra = [
        (row.promises.total, _(lang, "promises kept {rate}", rate=_rate(row.promises))),
        (row.redo, _(lang, "redone {n}", n=row.redo)),
        (row.returns_disputed, _(lang, "returns disputed {n}", n=row.returns_disputed)),
        (row.nudges_ignored, _(lang, "reminders ignored {n}", n=row.nudges_ignored)),
        (row.escalations, _(lang, "escalations {n}", n=row.escalations)),
        (row.overdue, _(lang, "overdue {n}", n=row.overdue)),
    ]
    parts += [text for count, text in extra if count]
    return f"{head}\n    " + " · ".join(parts)


def overdue_line(lang: str, item: OverdueItem, tz: tzinfo, day_length: timedelta) -> str:
    return _(
        lang,
        "{ref} {department} · {claimant} · idle {idle} · due {due}: {summary}",
        ref=f"<b>{ticket_ref(item.number)}</b>",
        department=escape(item.department or "—"),
        claimant=escape(item.claimant or _(lang, "unclaimed")),
        idle=span(lang, item.idle, day_length),
        due=local(item.due_at, tz),
        summary=escape(clip(item.summary, 60)),
    )


def digest(lang: str, d: Digest) -> str:
    """The leader's daily digest: the day's flow, what is open, the exceptions by name, the
    ranking."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(d.timezone)
    title = _(lang, "Daily digest · {region} · {day}", region=escape(d.region_name), day=d.day)
    lines = [f"<b>{title}</b>"]
    if d.late:
        lines.append(_(lang, "(sent late; it was due at {when})", when=local(d.due_at, tz)))
    lines.append(
        _(
            lang,
            "Since {start}: {new} new · {claimed} claimed · {resolved} resolved · {closed} closed",
            start=local(d.start, tz),
            new=d.new,
            claimed=d.claimed,
            resolved=d.resolved,
            closed=d.closed,
        )
    )
    counts = dict(d.open_by_state)
    opened = [f"{escape(state_word(lang, s))} {counts.get(s, 0)}" for s in _OPEN_ORDER]
    lines.append(_(lang, "Open now: {states}", states=" · ".join(opened)))
    lines += _overdue_section(lang, d, tz)
    lines += _exceptions_section(lang, d)
    lines += _ranking_section(lang, d.departments, d.window_days)
    return "\n".join(lines)


def _overdue_section(lang: str, d: Digest, tz: tzinfo) -> list[str]:
    if not d.overdue_total:
        return ["", _(lang, "Nothing is overdue.")]
    out = ["", f"<b>{_(lang, 'Overdue ({n}), longest first', n=d.overdue_total)}</b>"]
    out += [overdue_line(lang, item, tz, d.day_length) for item in d.overdue[:OVERDUE_SHOWN]]
    if d.overdue_total > len(d.overdue[:OVERDUE_SHOWN]):
        more = d.overdue_total - len(d.overdue[:OVERDUE_SHOWN])
        out.append(_(lang, "… and {n} more (/overdue)", n=more))
    return out


def _exceptions_section(lang: str, d: Digest) -> list[str]:
    out: list[str] = []
    if d.ignored:
        out += ["", f"<b>{_(lang, 'Reminders ignored ({n})', n=d.nudges_ignored)}</b>"]
        for who in d.ignored:
            dept = f" ({escape(who.department)})" if who.department else ""
            out.append(f"{escape(who.name)}{dept}: {who.count}")
    if d.escalations:
        out += ["", _(lang, "Escalations since the last digest: {n}", n=d.escalations)]
    if d.clusters:
        out += ["", f"<b>{_(lang, 'Similar open reports from different enterprises')}</b>"]
        for c in d.clusters:
            refs = ", ".join(ticket_ref(n) for n in c.numbers)
            out.append(
                _(
                    lang,
                    "{refs} · {department} · {n} enterprises: {summary}",
                    refs=refs,
                    department=escape(c.department or _(lang, "not assigned")),
                    n=c.enterprises,
                    summary=escape(clip(c.summary, 60)),
                )
            )
    return out


def _had_work(row: DepartmentFigures) -> bool:
    counts = (row.assigned, row.overdue, row.redo, row.nudges_ignored, row.escalations)
    return row.score is not None or any(counts)


def _ranking_section(lang: str, rows: Sequence[DepartmentFigures], days: int) -> list[str]:
    title = _(lang, "Departments, last {n} days", n=days)
    ranked = [row for row in rows if _had_work(row)]
    if not ranked:
        return ["", f"<b>{title}</b>", _(lang, "No tickets were assigned in that time.")]
    lines = ["", f"<b>{title}</b>", *(department_line(lang, row) for row in ranked)]
    if idle := len(rows) - len(ranked):
        # a leader reads the departments that had work; the rest are one line
        lines.append(_(lang, "{n} other departments had no tickets.", n=idle))
    return lines


def ranking(lang: str, region: str, days: int, rows: Sequence[DepartmentFigures]) -> str:
    """`/stats`: the department ranking of a region over a number of days."""
    head = f"<b>{_(lang, 'Department ranking · {region}', region=escape(region))}</b>"
    legend = _(lang, "Tiers: A ≥ 90%, B ≥ 75%, C below (mean of the three rates)")
    return "\n".join([head, *_ranking_section(lang, rows, days)[1:], "", legend])


def chart_labels(lang: str) -> tuple[str, str, str]:
    return (_(lang, "response"), _(lang, "resolution"), _(lang, "satisfaction"))


def chart_title(lang: str, region: str, day: date | None, days: int) -> str:
    if day is None:
        return _(lang, "{region}: the three rates, last {n} days", region=region, n=days)
    return _(
        lang, "{region} · {day}: the three rates, last {n} days", region=region, day=day, n=days
    )


# ---- the accountability record --------------------------------------------------------------


def record(lang: str, r: Record, tz: tzinfo) -> str:
    """`/record`: what a department or an official did with the tickets over a period."""
    title = _(
        lang,
        "Record of {subject}, last {n} days",
        subject=escape(r.subject + (f" ({r.department})" if r.department and r.is_person else "")),
        n=r.days,
    )
    rows = [
        (_(lang, "assigned to the department"), r.assigned),
        (_(lang, "claimed"), r.claimed),
        (_(lang, "returned (not ours)"), r.returned),
        (_(lang, "returns rejected"), r.returns_rejected),
        (_(lang, "progress notes"), r.progress),
        (_(lang, "resolved"), r.resolved),
        (_(lang, "closed"), r.closed),
        (_(lang, "closed without a rating"), r.closed_unrated),
        (_(lang, "sent back for redo"), r.redo),
        (_(lang, "escalations"), r.escalations),
        (_(lang, "reminders"), r.nudges),
        (_(lang, "reminders ignored"), r.nudges_ignored),
        (_(lang, "overdue now"), r.overdue_total),
    ]
    lines = [f"<b>{title}</b>", *(f"{escape(label)}: {n}" for label, n in rows)]
    if r.ratings:
        shown = " · ".join(f"{escape(rating_word(lang, k))} {n}" for k, n in r.ratings)
        lines.append(_(lang, "Ratings: {ratings}", ratings=shown))
    if r.figures is not None:
        lines += ["", department_line(lang, r.figures)]
    if r.overdue:
        lines += ["", f"<b>{_(lang, 'Overdue now')}</b>"]
        lines += [overdue_line(lang, item, tz, r.day_length) for item in r.overdue]
    return "\n".join(lines)
