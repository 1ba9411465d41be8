"""The README's table of settings is the settings class, row for row."""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings
from bot.settings_doc import END, START, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_holds_exactly_the_generated_table() -> None:
    text = README.read_text(encoding="utf-8")
    between = text.split(START, 1)[1].split(END, 1)[0]
    assert between == "\n" + settings_table(), (
        "README.md's settings table is out of date: run `python -m bot.settings_doc README.md`"
    )


def test_every_setting_has_a_row_with_a_description() -> None:
    rows = settings_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name} has no description"
        assert any(row.startswith(f"| `QUNBAN_{name.upper()}` |") for row in rows)


def test_defaults_are_written_as_they_are_set() -> None:
    table = settings_table()
    assert "| `QUNBAN_SCAN_EVERY` | `1m` |" in table
    assert "| `QUNBAN_AUTOCLOSE_AFTER` | `7d` |" in table
    assert "| `QUNBAN_DIGEST_AT` | `08:30` |" in table
    assert "| `QUNBAN_TELEGRAM_TOKEN` | (unset) |" in table
    assert "| `QUNBAN_OUTBOX_ALERT_AFTER` | `15m` |" in table
