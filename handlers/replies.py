"""What the front says outside the ticket cards: usage, help per role, onboarding, refusals."""

from __future__ import annotations

from typing import Any

from bot import texts
from bot.errors import (
    InviteError,
    NotRegisteredError,
    QunbanError,
    RateLimitedError,
    TicketError,
    UnboundGroupError,
)
from bot.i18n import gettext
from bot.markup import escape
from bot.services.views import PersonView
from storage.tables import Role


def _(lang: str, message: str, **params: Any) -> str:
    text = gettext(lang, message)
    return text.format(**params) if params else text


# command -> (how it is written, what it does); both are catalog messages
COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("/report TEXT", "file a problem; privately, step by step"),
    "mine": ("/mine", "your tickets"),
    "open": ("/open", "the open tickets you may see"),
    "overdue": ("/overdue", "tickets past their due time"),
    "ticket": ("/ticket N", "a ticket and its timeline"),
    "rate": ("/rate N satisfied|basic|unsatisfied|unsolved [REASON]", "rate a resolved ticket"),
    "withdraw": ("/withdraw N", "withdraw a ticket nobody has claimed"),
    "claim": ("/claim N [YYYY-MM-DD]", "claim a ticket (领办), with the date you promise"),
    "return": ("/return N REASON [DEPT]", "return a ticket that is not your department's (退单)"),
    "progress": ("/progress N TEXT", "add a progress note"),
    "resolve": ("/resolve N TEXT", "resolve a ticket (办结)"),
    "assign": ("/assign N DEPT", "assign a ticket to a department (交办)"),
    "approve": ("/approve N [DEPT]", "approve a return"),
    "reject": ("/reject N", "reject a return"),
    "transfer": ("/transfer N DEPT", "move a ticket to another department"),
    "merge": ("/merge N INTO", "merge a duplicate into another ticket (并单)"),
    "supervise": ("/supervise N [NOTE]", "supervise a ticket (督办)"),
    "digest": ("/digest", "the digest now"),
    "stats": ("/stats [7d|30d]", "the departments ranked"),
    "record": ("/record [DEPT|@person]", "the accountability record"),
    "start": ("/start INVITE", "join with an invite"),
    "lang": ("/lang zh|en", "the language I answer you in"),
    "help": ("/help", "this list"),
}

_ORG = ["open", "overdue", "mine", "ticket", "assign", "approve", "reject", "transfer", "merge"]
ROLE_COMMANDS: dict[Role, list[str]] = {
    Role.ENTERPRISE: ["report", "mine", "open", "ticket", "rate", "withdraw"],
    Role.OFFICIAL: ["mine", "open", "overdue", "ticket", "claim", "return", "progress", "resolve"],
    Role.LEADER: [*_ORG, "supervise", "digest", "stats", "record"],
    Role.COORDINATOR: _ORG,
    Role.ADMIN: _ORG,
}
_WORDS_HINT = {
    Role.OFFICIAL: "In the group you may also write: 领办 12, 进展 12 …, 办结 12 …, 退单 12 …",
    Role.LEADER: "In the group you may also write: 交办 12 DEPT, 督办 12 …",
    Role.COORDINATOR: "In the group you may also write: 交办 12 DEPT, 转办 12 DEPT",
    Role.ENTERPRISE: "In the group, a message tagged #问题 is filed too.",
}


def usage(lang: str, command: str) -> str:
    written = COMMANDS.get(command, (f"/{command}", ""))[0]
    return _(lang, "Usage: {usage}", usage=escape(gettext(lang, written)))


def help_text(lang: str, person: PersonView | None) -> str:
    """The commands of the person's role; strangers learn how to join."""
    if person is None:
        return stranger(lang)
    names = [*ROLE_COMMANDS.get(person.role, []), "lang", "help"]
    head = _(
        lang,
        "<b>{name}</b> · {role}",
        name=escape(person.name),
        role=escape(texts.role_word(lang, person.role)),
    )
    lines = [head]
    for name in names:
        written, what = COMMANDS[name]
        lines.append(f"{escape(gettext(lang, written))} — {escape(gettext(lang, what))}")
    if person.role in _WORDS_HINT:
        lines.append(escape(gettext(lang, _WORDS_HINT[person.role])))
    return "\n".join(lines)


def stranger(lang: str) -> str:
    return _(
        lang,
        "Sorry, I do not know you yet. Ask your administrator for an invite, "
        "then send me /start CODE privately.",
    )


def unbound_group(lang: str) -> str:
    return _(lang, "This group is not connected to Qunban yet; an administrator can bind it.")


def welcome(lang: str, person: PersonView) -> str:
    line = _(
        lang,
        "Welcome, {name}! You are registered as {role}.",
        name=escape(person.name),
        role=escape(texts.role_word(lang, person.role)),
    )
    return f"{line}\n\n{help_text(lang, person)}"


def language_set(lang: str) -> str:
    # rendered in the new language, so one sentence says "from now on, this language"
    return _(lang, "I will answer you in English from now on.")


def list_title(lang: str, which: str) -> str:
    titles = {"mine": "Your tickets", "open": "Open tickets", "overdue": "Overdue tickets"}
    return gettext(lang, titles[which])


def not_available(lang: str) -> str:
    return _(lang, "That is not available yet.")


def private_only(lang: str) -> str:
    return _(lang, "Please write to me privately for that.")


def bad_button(lang: str) -> str:
    return _(lang, "This button is not valid.")


def working(lang: str) -> str:
    return _(lang, "Working on it…")


def done_toast(lang: str, number: int) -> str:
    return _(lang, "Done: {ref}", ref=texts.ticket_ref(number))


_INVITE = {
    "invite_unknown": "That invite code is not known.",
    "invite_used": "That invite has already been used.",
    "invite_expired": "That invite has expired; ask for a new one.",
    "already_registered": "This account is already registered as {name}.",
    "bad_language": "Choose zh or en.",
}


def refusal(lang: str, error: QunbanError) -> str:
    """One sentence for the person who tried; nothing was changed."""
    if isinstance(error, NotRegisteredError):
        return stranger(lang)
    if isinstance(error, UnboundGroupError):
        return unbound_group(lang)
    if isinstance(error, RateLimitedError):
        return _(
            lang,
            "You have filed {limit} reports within the hour; please wait a little.",
            limit=error.params.get("limit", "?"),
        )
    if isinstance(error, InviteError):
        template = _INVITE.get(error.code, "That invite cannot be used.")
        return _(lang, template, name=escape(str(error.params.get("name", ""))))
    if error.code == "leaders_only":
        return _(lang, "Only leaders can see the digest, the ranking and the records.")
    if error.code == "role" and error.params.get("action") == "report":
        return _(lang, "Only members of an enterprise can report problems.")
    if isinstance(error, TicketError):
        return texts.refusal(lang, error.code, error.params)
    return _(lang, "That cannot be done.")


# ---- the private report conversation -------------------------------------------------------

OTHER = "Other"
SHOW_NAME, ANONYMOUS = "Show our name", "Anonymous"
SEND, CANCEL = "Send", "Cancel"


def ask_category(lang: str) -> str:
    return _(lang, "Which department is it about? Pick one, or “{other}”.", other=_(lang, OTHER))


def ask_description(lang: str) -> str:
    return _(lang, "Describe the problem in a few sentences.")


def ask_photos(lang: str) -> str:
    return _(lang, "Send photos or files if you have any, then /done. Or /skip.")


def photo_added(lang: str, count: int) -> str:
    return _(lang, "Got it ({n}). Send more, or /done.", n=count)


def ask_anonymous(lang: str) -> str:
    return _(
        lang,
        "Show your enterprise's name on the group card? If you choose “{anonymous}”, the "
        "group sees only your county and industry; the department and the leaders still see "
        "who you are.",
        anonymous=_(lang, ANONYMOUS),
    )


def confirm(lang: str, draft: dict[str, Any]) -> str:
    return _(
        lang,
        "Please check:\nDepartment: {category}\nProblem: {text}\nAttachments: {n}\n"
        "Shown as: {shown}\n\nSend it?",
        category=escape(draft.get("category") or "—"),
        text=escape(draft.get("text") or "—"),
        n=len(draft.get("files", [])),
        shown=_(lang, ANONYMOUS if draft.get("anonymous") else SHOW_NAME),
    )


def need_words(lang: str) -> str:
    return _(lang, "Please answer in words.")


def cancelled(lang: str) -> str:
    return _(lang, "Cancelled; nothing was filed.")
