"""Telegram adapters: turn updates into service calls and results into replies."""

from __future__ import annotations

from typing import Any

from telegram.ext import Application


def register(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Add every handler to the application (the composition root calls this once)."""
