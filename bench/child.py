"""The bot process whose footprint case 5 measures: `python -m bench.child URL CITY`.

It imports what `qunban run` imports, wires the services and the Application, then runs one
idle sweep and builds, renders and charts the city's digest, as the two sweeps of a running
bot do; it prints its peak resident memory after each step as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time


def _status(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mb() -> float:
    """The peak resident memory of this program. VmHWM starts afresh at exec; ru_maxrss also
    counts what the process held before it (a fork of a large parent), so it is the fallback."""
    high = _status("VmHWM")
    return high if high is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    return _status("VmRSS") or 0.0


async def main(url: str, city: int) -> dict[str, float]:
    started = time.perf_counter()
    import bot.runner  # noqa: F401  (all a running bot imports)
    from bench.settings import NOW, TOKEN, TZ, bench_settings
    from bot.app import build_application, build_services
    from bot.clock import ManualClock

    out = {"imports_mb": peak_mb(), "import_s": time.perf_counter() - started}
    settings = bench_settings(url)
    clock = ManualClock(NOW)
    services = build_services(settings, clock=clock, limits=None)
    app = build_application(settings, clock=clock, services=services, token=TOKEN)
    out["wired_mb"] = peak_mb()
    try:
        report = await services.nudges.scan(NOW)
        out["sweep_mb"] = peak_mb()
        digest = await services.digests.build(city, NOW.astimezone(TZ).date(), NOW)
        services.digests.render("zh", digest)
        services.digests.chart("zh", digest)
        out["digest_mb"] = peak_mb()
        out["nudges"] = len(report.nudges)
    finally:
        await services.close()
    del app
    out["peak_mb"] = peak_mb()
    out["rss_at_end_mb"] = current_mb()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
