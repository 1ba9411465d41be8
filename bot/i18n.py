"""Translations: gettext catalogs (Babel .po files) read once, one Translations per language."""

from __future__ import annotations

from functools import cache
from gettext import NullTranslations
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"


def normalize(language: str | None) -> str:
    """A supported language for whatever a person or Telegram says (zh-hans -> zh)."""
    if not language:
        return DEFAULT_LANGUAGE
    short = language.lower().replace("_", "-").split("-")[0]
    return short if short in LANGUAGES else DEFAULT_LANGUAGE


@cache
def translations(language: str) -> NullTranslations:
    """The catalog of one language, compiled in memory from its .po file."""
    po_path = LOCALE_DIR / normalize(language) / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not po_path.exists():
        return NullTranslations()
    import io

    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=normalize(language))
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def gettext(language: str, message: str) -> str:
    return translations(normalize(language)).gettext(message)


def ngettext(language: str, singular: str, plural: str, n: int) -> str:
    return translations(normalize(language)).ngettext(singular, plural, n)
