"""The department ranking as a PNG bar chart, drawn with Pillow.

A plotting library would cost the bot some 60 MB of memory (and itself, numpy and its font
cache to load) for one chart a day; the chart is a few rectangles, lines and labels.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# fonts that carry Chinese, by the start of their file names; the first one installed is used,
# else labels fall back to codes
_CJK_FILES = (
    "NotoSansCJK",
    "NotoSansSC",
    "SourceHanSans",
    "wqy-microhei",
    "wqy-zenhei",
    "DroidSansFallback",
    "simhei",
    "msyh",
    "PingFang",
    "uming",
)
_LATIN_FILES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf")
_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:/Windows/Fonts",
)
_COLOURS = ("#4c72b0", "#55a868", "#dd8452")
_TIER_LINES = (75, 90)
_GRID = "#999999"
_INK = "#262626"
_DPI = 100
_WIDTH = 8 * _DPI
_SIZE = 9 * _DPI // 72  # 9 pt
_SMALL = 8 * _DPI // 72
_TITLE = 11 * _DPI // 72


@dataclass(frozen=True)
class Bar:
    """One department's row of the chart; rates are fractions, None when there is no data."""

    name: str
    code: str
    tier: str
    response: float | None
    resolution: float | None
    satisfaction: float | None


@cache
def _font_files() -> tuple[Path, ...]:
    found: list[Path] = []
    for folder in _FONT_DIRS:
        for root, _dirs, files in os.walk(os.path.expanduser(folder)):
            found += [Path(root, f) for f in files if f.lower().endswith((".ttf", ".ttc", ".otf"))]
    return tuple(sorted(found))


def _first(prefixes: Sequence[str], exact: bool = False) -> str | None:
    files = _font_files()
    for prefix in prefixes:
        for path in files:
            if path.name == prefix if exact else path.name.lower().startswith(prefix.lower()):
                return str(path)
    return None


@cache
def cjk_font() -> str | None:
    """The installed font file that can draw Chinese, if any."""
    return _first(_CJK_FILES)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = cjk_font() or _first(_LATIN_FILES, exact=True)
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)


def drawable(text: str) -> bool:
    """Whether the chart's fonts can draw this text (Chinese needs a CJK font)."""
    return cjk_font() is not None or all(ord(ch) < 0x2E80 for ch in text)


def ranking_png(title: str, legend: Sequence[str], bars: Sequence[Bar]) -> bytes:
    """Three bars per department (response, resolution, satisfaction), best first, with the
    tier lines at 75% and 90%; PNG bytes."""
    rows = max(len(bars), 1)
    height = int((1.8 + 0.55 * rows) * _DPI)
    image = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font, small, big = _font(_SIZE), _font(_SMALL), _font(_TITLE)
    labels = [_label(i, bar) for i, bar in enumerate(bars)]
    heading = title if drawable(title) else _ascii(title)
    pad = 10
    left = pad + max((draw.textlength(text, font=font) for text in labels), default=0) + 8
    right = _WIDTH - pad - 10
    top = pad + _text_height(draw, heading, big) + 10
    legend_height = _text_height(draw, "Ag", small) + 12
    bottom = height - pad - legend_height - _text_height(draw, "100%", font) - 10
    draw.text(((_WIDTH - draw.textlength(heading, font=big)) / 2, pad), heading, _INK, big)
    row = (bottom - top) / rows
    width = 0.26 * row

    def x_at(percent: float) -> float:
        return left + (right - left) * percent / 100

    for percent in range(0, 101, 20):  # the axis: ticks and their labels
        x = x_at(percent)
        draw.line([(x, bottom), (x, bottom + 4)], _INK)
        text = f"{percent}%"
        draw.text((x - draw.textlength(text, font=font) / 2, bottom + 6), text, _INK, font)
    for i, (bar, text) in enumerate(zip(bars, labels, strict=True)):
        middle = top + row * (i + 0.5)
        for offset, colour in enumerate(_COLOURS):
            y = middle + (offset - 1) * width
            value = _value(bar, offset)
            if value > 0:
                draw.rectangle([(left, y - width / 2), (x_at(value), y + width / 2)], colour)
        draw.line([(left - 4, middle), (left, middle)], _INK)
        text_y = middle - _text_height(draw, text, font) / 2
        draw.text((left - 6 - draw.textlength(text, font=font), text_y), text, _INK, font)
    for x in _TIER_LINES:
        _dashed(draw, x_at(x), top, bottom)
    draw.rectangle([(left, top), (right, bottom)], outline=_INK)
    _legend(draw, legend, small, (left + right) / 2, height - pad - legend_height)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _legend(
    draw: ImageDraw.ImageDraw,
    legend: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    centre: float,
    y: float,
) -> None:
    entries = [(text, colour) for text, colour in zip(legend, _COLOURS, strict=False)]
    sizes = [18 + 6 + draw.textlength(text, font=font) for text, _ in entries]
    x = centre - (sum(sizes) + 16 * (len(entries) - 1)) / 2
    box = _text_height(draw, "Ag", font)
    for (text, colour), size in zip(entries, sizes, strict=True):
        draw.rectangle([(x, y + 2), (x + 18, y + box - 2)], colour)
        draw.text((x + 24, y), text, _INK, font)
        x += size + 16


def _dashed(draw: ImageDraw.ImageDraw, x: float, top: float, bottom: float) -> None:
    y = top
    while y < bottom:
        draw.line([(x, y), (x, min(y + 4, bottom))], _GRID)
        y += 7


def _text_height(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> float:
    box = draw.textbbox((0, 0), text or "A", font=font)
    return float(box[3])


def _value(bar: Bar, index: int) -> float:
    rate = (bar.response, bar.resolution, bar.satisfaction)[index]
    return 0.0 if rate is None else rate * 100


def _label(index: int, bar: Bar) -> str:
    name = bar.name if drawable(bar.name) else bar.code
    return f"{index + 1}. {name} [{bar.tier}]"


def _ascii(text: str) -> str:
    return "".join(ch for ch in text if ord(ch) < 0x2E80).strip(" ·:") or "ranking"
