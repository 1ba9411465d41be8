"""`python -m bench [--quick] [--engine sqlite|postgres|both] [--case NAME]`: build the data,
run the cases, print one JSON object per result and then a table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from bench import digest, footprint, intake, sender, sweep
from bench.core import Result, Workspace, pg_reachable
from bench.history import Sizes
from bench.report import table

CASES = ("intake", "sweep", "digest", "sender", "footprint")


@dataclass(frozen=True)
class Plan:
    """How big each case runs."""

    history: Sizes  # the database of the sweep, the digest and the footprint
    smaller: Sizes  # the same backlog over a tenth of the history
    intake: intake.IntakeSizes
    sender: sender.SenderSizes
    runs: int


FULL = Plan(
    history=Sizes(1_000_000, 10_000, 100),
    smaller=Sizes(100_000, 10_000, 100),
    intake=intake.IntakeSizes(updates=600, latency_seconds=20.0, runs=3),
    sender=sender.SenderSizes(messages=10_000, chats=200),
    runs=5,
)
QUICK = Plan(
    history=Sizes(10_000, 1_000, 100),
    smaller=Sizes(2_000, 1_000, 100),
    intake=intake.IntakeSizes(updates=120, latency_seconds=3.0, runs=2),
    sender=sender.SenderSizes(messages=1_000, chats=200),
    runs=2,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument(
        "--case", action="append", choices=CASES, help="run only this case (repeatable)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the data builds")
    parser.add_argument(
        "--profile", action="store_true", help="profile each case (pyinstrument, dev extra)"
    )
    return parser.parse_args(argv)


def cases(plan: Plan) -> dict[str, Callable[[Workspace, str], Awaitable[list[Result]]]]:
    return {
        "intake": lambda ws, e: intake.run(ws, e, plan.intake),
        "sweep": lambda ws, e: sweep.run(ws, e, (plan.smaller, plan.history), plan.runs),
        "digest": lambda ws, e: digest.run(ws, e, plan.history, plan.runs),
        "sender": lambda ws, e: sender.run(ws, e, plan.sender),
        "footprint": lambda ws, e: footprint.run(ws, e, plan.history, plan.runs),
    }


@contextlib.contextmanager
def profiled(wanted: bool, what: str) -> Iterator[None]:
    """Profile the block with pyinstrument and print where the time went (to stderr)."""
    if not wanted:
        yield
        return
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("bench: --profile needs pyinstrument (pip install -e '.[dev]')") from None
    profiler = Profiler(async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        print(f"--- {what}", file=sys.stderr)
        print(profiler.output_text(unicode=True, color=False), file=sys.stderr)


async def main(argv: list[str] | None = None, *, plan: Plan | None = None) -> list[Result]:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("bench").setLevel(logging.INFO)
    plan = plan or (QUICK if args.quick else FULL)
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    if "postgres" in engines and (why := await pg_reachable()) is not None:
        raise SystemExit(f"bench: PostgreSQL is not reachable ({why}); set QUNBAN_TEST_PG_URL")
    chosen = args.case or list(CASES)
    results: list[Result] = []
    started = time.perf_counter()
    for engine in engines:
        ws = Workspace(keep=args.keep)
        try:
            for name in chosen:
                began = time.perf_counter()
                with profiled(args.profile, f"{name} on {engine}"):
                    found = await cases(plan)[name](ws, engine)
                for result in found:
                    print(result.to_json(), flush=True)
                    results.append(result)
                logging.getLogger("bench").info(
                    "%s on %s took %.1fs", name, engine, time.perf_counter() - began
                )
        finally:
            await ws.close()
    print(table(results, time.perf_counter() - started))
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        outcome = asyncio.run(main())
        sys.exit(0 if all(r.passed for r in outcome) else 1)
