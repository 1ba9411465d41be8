"""The department ranking as a PNG bar chart, drawn off-screen (Agg) without pyplot's globals."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import matplotlib as mpl
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

# fonts that carry Chinese; the first one installed is used, else labels fall back to codes
_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "AR PL UMing CN",
)
_COLOURS = ("#4c72b0", "#55a868", "#dd8452")
_TIER_LINES = (75, 90)


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
def cjk_font() -> str | None:
    """The installed font family that can draw Chinese, if any."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((family for family in _CJK_FAMILIES if family in installed), None)


def drawable(text: str) -> bool:
    """Whether the chart's fonts can draw this text (Chinese needs a CJK font)."""
    return cjk_font() is not None or all(ord(ch) < 0x2E80 for ch in text)


def ranking_png(title: str, legend: Sequence[str], bars: Sequence[Bar]) -> bytes:
    """Three bars per department (response, resolution, satisfaction), best first, with the
    tier lines at 75% and 90%; PNG bytes."""
    families = [f for f in (cjk_font(), "DejaVu Sans") if f]
    height = 1.8 + 0.55 * max(len(bars), 1)
    with mpl.rc_context({"font.family": families, "font.size": 9}), warnings.catch_warnings():
        # a glyph no font has is drawn as a box; that must not stop the chart
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing.*")
        figure = Figure(figsize=(8, height), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        width = 0.26
        for offset, (label, colour) in enumerate(zip(legend, _COLOURS, strict=False)):
            values = [_value(bar, offset) for bar in bars]
            positions = [i + (offset - 1) * width for i in range(len(bars))]
            axes.barh(positions, values, height=width, label=label, color=colour)
        axes.set_yticks(range(len(bars)), labels=[_label(i, bar) for i, bar in enumerate(bars)])
        axes.invert_yaxis()
        axes.set_xlim(0, 100)
        axes.xaxis.set_major_formatter(PercentFormatter())
        for x in _TIER_LINES:
            axes.axvline(x, color="#999999", linestyle="--", linewidth=0.8)
        axes.set_title(title if drawable(title) else _ascii(title))
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8)
        out = io.BytesIO()
        figure.savefig(out, format="png")
    return out.getvalue()


def _value(bar: Bar, index: int) -> float:
    rate = (bar.response, bar.resolution, bar.satisfaction)[index]
    return 0.0 if rate is None else rate * 100


def _label(index: int, bar: Bar) -> str:
    name = bar.name if drawable(bar.name) else bar.code
    return f"{index + 1}. {name} [{bar.tier}]"


def _ascii(text: str) -> str:
    return "".join(ch for ch in text if ord(ch) < 0x2E80).strip(" ·:") or "ranking"
