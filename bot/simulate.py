"""`qunban simulate`: a scripted week of real groups, played offline through the whole product."""

from __future__ import annotations

import html
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import yaml

from bot.config import Settings, parse_duration

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when built with it

SCENARIOS = Path(__file__).resolve().parent.parent / "seeds" / "scenarios"
DEFAULT_SCENARIO = "baotou-week"
RATING_CODES = {"satisfied": "s", "basic": "b", "unsatisfied": "u", "unsolved": "n"}


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names the step and the problem."""


@dataclass(frozen=True)
class Step:
    index: int
    at: datetime | None
    by: str | None = None
    where: str | None = None
    say: str | None = None
    press: Mapping[str, Any] | None = None
    note: str | None = None


@dataclass
class Scenario:
    title: str
    org: Path
    start: datetime
    end: datetime
    tick: timedelta
    settings: dict[str, Any]
    steps: list[Step]
    show: list[Mapping[str, Any]] = field(default_factory=list)


def find_scenario(name: str | None) -> Path:
    """A scenario by name (in seeds/scenarios) or by path."""
    if name is None:
        return SCENARIOS / f"{DEFAULT_SCENARIO}.yaml"
    path = Path(name)
    if path.exists():
        return path
    named = SCENARIOS / f"{name.removesuffix('.yaml')}.yaml"
    if named.exists():
        return named
    known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
    raise ScenarioError(f"no scenario {name!r}; known: {known}")


def load_scenario(path: Path, tz: ZoneInfo) -> Scenario:
    """Read and check a scenario file before anything runs."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except OSError as err:
        raise ScenarioError(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise ScenarioError(f"{path}: needs a mapping with a list of steps")

    def when(value: Any, where: str) -> datetime:
        try:
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        except ValueError:
            raise ScenarioError(f"{path}: {where}: {value!r} is not a time") from None
        return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment

    steps = []
    for index, raw in enumerate(doc["steps"], start=1):
        if not isinstance(raw, dict):
            raise ScenarioError(f"{path}: steps[{index}] is not a mapping")
        at = when(raw["at"], f"steps[{index}].at") if "at" in raw else None
        step = Step(
            index,
            at,
            raw.get("by"),
            raw.get("in"),
            raw.get("say"),
            raw.get("press"),
            raw.get("note"),
        )
        if step.note is None and (step.by is None or (step.say is None) == (step.press is None)):
            raise ScenarioError(f"{path}: steps[{index}] needs `by` and one of `say` or `press`")
        if step.say is not None and step.where is None:
            raise ScenarioError(f"{path}: steps[{index}] says something but not `in` where")
        steps.append(step)
    org = (path.parent / str(doc.get("org", "baotou.yaml"))).resolve()
    if not org.exists():
        org = (SCENARIOS.parent / str(doc.get("org"))).resolve()
    return Scenario(
        title=str(doc.get("title", path.stem)),
        org=org,
        start=when(doc.get("start", steps[0].at), "start"),
        end=when(doc.get("end", steps[-1].at), "end"),
        tick=parse_duration(doc.get("tick", "15m")),
        settings=dict(doc.get("settings") or {}),
        steps=steps,
        show=list(doc.get("show") or []),
    )


async def run_scenario(
    name: str | None, *, language: str = "zh", out: TextIO, charts: Path | None = None
) -> None:
    """Play a scenario from start to end and print what each chat saw."""
    from bot.simulation import Simulation

    with tempfile.TemporaryDirectory(prefix="qunban-sim-") as folder:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=f"sqlite+aiosqlite:///{folder}/simulate.db",
            telegram_token=None,
        )
        scenario = load_scenario(find_scenario(name), settings.tz)
        overrides = {k: parse_duration(v) for k, v in scenario.settings.items()}
        settings = settings.model_copy(update=overrides)
        simulation = Simulation(scenario, settings, language=language, out=out, charts=charts)
        await simulation.play()


def plain(text: str | None) -> str:
    """Telegram HTML as terminal text."""
    if not text:
        return ""
    return html.unescape(re.sub(r"<[^>]+>", "", text))
