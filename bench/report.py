"""The readable table after the JSON lines."""

from __future__ import annotations

from bench.core import Result

HEADERS = ("case", "engine", "figure", "floor", "ratio", "target", "")


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def row(result: Result) -> tuple[str, ...]:
    return (
        result.name,
        result.engine,
        _number(result.value, result.unit),
        _number(result.floor, result.unit),
        "—" if result.ratio is None else f"{result.ratio:.2f}",
        result.target,
        "pass" if result.passed else "FAIL",
    )


def table(results: list[Result], seconds: float | None = None) -> str:
    rows = [HEADERS, *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    passed = sum(r.passed for r in results)
    tail = f"{passed} of {len(results)} pass"
    if seconds is not None:
        tail += f" ({seconds:.0f} s)"
    return "\n".join(["", *lines, "", tail])
