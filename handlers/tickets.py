"""The workflow commands (交办, 领办, 退单, 督办, 办结 …) and their Chinese words in groups.

On success a handler says nothing itself: the service queued the group's line and the
private notes in the same transaction, and the sender is woken to send them.
"""

from __future__ import annotations

import re

from telegram import Update

from bot.context import BotContext
from bot.errors import InvalidTransitionError, UsageError
from handlers.common import (
    Args,
    Handler,
    actor,
    attachments,
    changed,
    command,
    origin,
    parse_day,
    parse_number,
    parse_rating,
)


def _required(text: str) -> str:
    if not text:
        raise UsageError()
    return text


@command("assign")
async def assign(update: Update, context: BotContext, args: Args) -> None:
    number, department = parse_number(args.word(0)), _required(args.rest(1))
    await context.services.tickets.assign(actor(update), number, department, origin(update))
    changed(context)


@command("claim")
async def claim(update: Update, context: BotContext, args: Args) -> None:
    number, promised = parse_number(args.word(0)), parse_day(args.word(1))
    await context.services.tickets.claim(actor(update), number, promised, origin(update))
    changed(context)


@command("return")
async def return_(update: Update, context: BotContext, args: Args) -> None:
    number, reason = parse_number(args.word(0)), _required(args.rest(1))
    tickets, words = context.services.tickets, reason.split()
    if len(words) > 1:
        # "/return 12 not ours market": the last word suggests a department, when one matches
        head = reason.rstrip()[: -len(words[-1])].strip()
        try:
            await tickets.return_(actor(update), number, head, words[-1], origin(update))
            return changed(context)
        except InvalidTransitionError as error:
            if error.code != "unknown_department":
                raise
    await tickets.return_(actor(update), number, reason, None, origin(update))
    return changed(context)


@command("approve")
async def approve(update: Update, context: BotContext, args: Args) -> None:
    number, department = parse_number(args.word(0)), args.rest(1) or None
    await context.services.tickets.approve_return(
        actor(update), number, department, origin(update)
    )
    changed(context)


@command("reject")
async def reject(update: Update, context: BotContext, args: Args) -> None:
    number, note = parse_number(args.word(0)), args.rest(1) or None
    await context.services.tickets.reject_return(actor(update), number, note, origin(update))
    changed(context)


@command("progress")
async def progress(update: Update, context: BotContext, args: Args) -> None:
    number, note = parse_number(args.word(0)), _required(args.rest(1))
    await context.services.tickets.progress(actor(update), number, note, origin(update))
    changed(context)


@command("resolve")
async def resolve(update: Update, context: BotContext, args: Args) -> None:
    number, note = parse_number(args.word(0)), _required(args.rest(1))
    await context.services.tickets.resolve(actor(update), number, note, origin(update))
    changed(context)


@command("rate")
async def rate(update: Update, context: BotContext, args: Args) -> None:
    number, rating = parse_number(args.word(0)), parse_rating(args.word(1))
    reason = args.rest(2) or None
    await context.services.tickets.rate(actor(update), number, rating, reason, origin(update))
    changed(context)


@command("supervise")
async def supervise(update: Update, context: BotContext, args: Args) -> None:
    """督办, on site too: photos and a location in the message or the one it replies to."""
    message = update.effective_message
    number, note = parse_number(args.word(0)), args.rest(1) or None
    files = attachments(message, message.reply_to_message if message else None)
    await context.services.tickets.supervise(
        actor(update), number, note, files, origin=origin(update)
    )
    changed(context)


@command("transfer")
async def transfer(update: Update, context: BotContext, args: Args) -> None:
    number, department = parse_number(args.word(0)), _required(args.rest(1))
    await context.services.tickets.transfer(actor(update), number, department, origin(update))
    changed(context)


@command("withdraw")
async def withdraw(update: Update, context: BotContext, args: Args) -> None:
    number = parse_number(args.word(0))
    await context.services.tickets.withdraw(actor(update), number, origin(update))
    changed(context)


@command("merge")
async def merge(update: Update, context: BotContext, args: Args) -> None:
    number, into = parse_number(args.word(0)), parse_number(args.word(1))
    await context.services.tickets.merge(actor(update), number, into, origin(update))
    changed(context)


COMMANDS: dict[str, Handler] = {
    "assign": assign,
    "claim": claim,
    "return": return_,
    "approve": approve,
    "reject": reject,
    "progress": progress,
    "resolve": resolve,
    "rate": rate,
    "supervise": supervise,
    "transfer": transfer,
    "withdraw": withdraw,
    "merge": merge,
}

# the words people write in the group instead of the commands
WORDS: dict[str, Handler] = {
    "交办": assign,
    "领办": claim,
    "退单": return_,
    "进展": progress,
    "办结": resolve,
    "评价": rate,
    "督办": supervise,
    "转办": transfer,
    "撤回": withdraw,
    "并单": merge,
}
WORD_PATTERN = re.compile(
    r"^\s*(?P<verb>" + "|".join(WORDS) + r")\s*(?P<rest>[#＃]?\d.*)?$", re.DOTALL
)


async def word(update: Update, context: BotContext) -> None:
    """`领办 12`, `办结 12 已解决`: the same handlers as the commands."""
    verb = context.matches[0].group("verb")
    await WORDS[verb](update, context)
