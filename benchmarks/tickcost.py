"""`python -m benchmarks.tickcost`: what one tick costs, in-process, without Celery.

Runs `engine.tick.run_tick` directly for B bots x R rounds on a private stack (Redis,
simulator, SQLite or `--database-url`) and reports per tick: CPU and wall time, SQL
statements and commits, Redis commands, successor messages sent, and where the CPU
went (self time by library, from cProfile). When a benchmark misses its target this
says which part of the tick to make cheaper; the Celery overhead is what the baseline
measures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import redis
from sqlalchemy import event

from benchmarks import fleet
from benchmarks.infra import harness_runtime, open_stack
from engine import lifecycle, prepared

# Where a function's own time is booked, by a fragment of its file path (first match).
LIBRARIES = (
    ("sqlalchemy", "sqlalchemy"),
    ("sqlmodel", "sqlalchemy"),
    ("sqlite3", "sqlite (driver)"),
    ("psycopg", "postgres (driver)"),
    ("redis/", "redis-py"),
    ("kombu", "celery/kombu"),
    ("celery", "celery/kombu"),
    ("structlog", "logging"),
    ("logging/", "logging"),
    ("pydantic", "pydantic"),
    ("ccxt", "ccxt"),
    ("/engine/", "engine"),
    ("/strategies/", "strategies"),
    ("socket", "sockets"),
    ("select", "sockets"),
    ("json", "json"),
)


class Counters:
    """SQL statements, commits and Redis commands, counted by hooks."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()

    def install(self, db: Any) -> None:
        """Hook the SQLAlchemy engine and every redis-py client in this process."""
        event.listen(db, "before_cursor_execute", self._statement)
        event.listen(db, "commit", lambda *a: self._add("sql_commits"))
        # Prepared statements bypass Core's events: count them where they run.
        run, commit = prepared.Session._execute, prepared.Session.commit

        def run_prepared(session: Any, statement: Any, params: Any) -> Any:
            self._statement(None, None, statement.compiled(db.dialect).sql)
            return run(session, statement, params)

        def commit_prepared(session: Any) -> None:
            self._add("sql_commits")
            commit(session)

        prepared.Session._execute = run_prepared  # type: ignore[method-assign]
        prepared.Session.commit = commit_prepared  # type: ignore[method-assign]
        original = redis.Redis.execute_command
        pipeline = redis.client.Pipeline.execute

        def execute_command(client: Any, *args: Any, **kwargs: Any) -> Any:
            self._add("redis_commands")
            return original(client, *args, **kwargs)

        def execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self._add("redis_pipelines")
            return pipeline(pipe, *args, **kwargs)

        redis.Redis.execute_command = execute_command  # type: ignore[method-assign,assignment]
        redis.client.Pipeline.execute = execute  # type: ignore[method-assign,assignment]

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._add("sql_statements")
        self.statements[" ".join(statement.split())[:110]] += 1

    def _add(self, key: str) -> None:
        self.counts[key] += 1


def library_of(filename: str, function: str) -> str:
    """The library a function belongs to (see LIBRARIES); C built-ins (file `~`) by
    their name, e.g. `<method 'execute' of 'sqlite3.Cursor' objects>`."""
    where = function if filename == "~" else filename
    for fragment, library in LIBRARIES:
        if fragment in where:
            return library
    return "builtins" if filename == "~" else "other (stdlib)"


def self_time_by_library(profile: cProfile.Profile) -> dict[str, float]:
    """Seconds of own (not cumulative) time per library."""
    stats = pstats.Stats(profile)
    totals: Counter[str] = Counter()
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        totals[library_of(filename, function)] += tottime
    return dict(totals.most_common())


def main(argv: list[str] | None = None) -> int:
    """Measure and print the cost of one tick."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tickcost", description=__doc__)
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dca-every", type=int, default=10)
    parser.add_argument(
        "--strategies",
        default="dca",
        choices=["mixed", *fleet.MIXED],
        help="what every bot runs; mixed: the four built-ins in turn",
    )
    parser.add_argument("--database-url")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    args = parser.parse_args(argv)
    with open_stack(database_url=args.database_url) as stack:
        from engine.logging import configure_logging
        from engine.tick import run_tick

        # The tick logs at INFO as in a worker; the lines go nowhere, their cost stays.
        configure_logging("INFO", "json", stream=io.StringIO())
        base = harness_runtime()
        sent: list[int] = []

        def enqueue(bot: str, generation: int, slot: int, due: float) -> None:
            # Sent for real (its cost is part of a tick), but no worker runs it: this
            # process calls every slot itself.
            sent.append(1)
            base.enqueue(bot, generation, slot, due)

        rt = replace(base, enqueue=enqueue)
        # 5 s: successors stay inside the ETA horizon (sent, not parked) for 2 x 25 rounds.
        configs = fleet.fleet(
            "t", args.bots, 5.0, dca_every=args.dca_every, strategies=args.strategies
        )
        for config in configs:
            lifecycle.start(rt, config)
        generation = {c.name: 1 for c in configs}

        def one_round(bots: Sequence[Any] = configs) -> None:
            for config in bots:
                mirror = rt.coordinator.mirror(config.name)  # type: ignore[attr-defined]
                run_tick(rt, config.name, generation[config.name], mirror.next_slot)

        # One bot per symbol first: markets loaded, market data cached, connections open.
        first_of_symbol = list({c.symbol: c for c in reversed(configs)}.values())
        one_round(first_of_symbol)
        # Each bot's first tick in a process also parses its config and builds its
        # strategy, gateway and paper balances: what a fleet's start-up pays per process.
        warmed = {c.name for c in first_of_symbol}
        rest = [c for c in configs if c.name not in warmed]
        cold = time.process_time()
        one_round(rest)
        cold = time.process_time() - cold
        counters = Counters()
        counters.install(rt.db)
        sent.clear()
        # First without the profiler (true times), then again under it (shares).
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.rounds):
            one_round()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ticks = args.bots * args.rounds
        print(
            f"tick cost over {ticks} ticks ({args.bots} bots x {args.rounds} rounds, "
            f"{args.strategies}, DCA every {args.dca_every}, db {stack.db_url.split(':')[0]}),"
            " one thread:"
        )
        print(f"  wall {1000 * wall / ticks:.2f} ms/tick, CPU {1000 * cpu / ticks:.2f} ms/tick")
        first = 1000 * cold / max(len(rest), 1)
        print(
            f"  a new bot's first tick (config, strategy, gateway, paper balances): "
            f"CPU {first:.2f} ms/tick"
        )
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.rounds):
            one_round()
        profile.disable()
        ticks *= 2  # the counters saw both passes
        for key, value in sorted(counters.counts.items()):
            # Pipelines and the claim/lock scripts are one round trip each.
            print(f"  {key}: {value / ticks:.2f}/tick")
        print(f"  successor messages: {len(sent) / ticks:.2f}/tick")
        print("  SQL statements per tick, by shape:")
        for statement, n in counters.statements.most_common(20):
            print(f"    {n / ticks:5.2f}  {statement}")
        by_lib = self_time_by_library(profile)
        total = sum(by_lib.values()) or 1.0
        print("  own CPU time by library:")
        for library, seconds in by_lib.items():
            print(f"    {library:20s} {100 * seconds / total:5.1f} %")
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(
            r"engine|strategies", args.top
        )
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
