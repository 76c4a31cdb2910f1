"""Operator-scale commands: validate and start 1,000 bot files in one command, stop them
all, and the dashboard's fleet endpoints with 10,000 bots stored.

    python -m benchmarks.bulk [--bots 1000] [--fleet 10000]

Everything runs on a private stack (embedded Redis, SQLite, the simulator in its own
process); the commands run as an operator types them (`botengine ...` subprocesses,
process start-up included). Target: files validated and started in under 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.infra import ROOT, open_stack

START_TARGET_S = 30.0
TOKEN = "bulk-benchmark-token-0123456789"
STRATEGIES = (
    ("dca", "{quote_amount: 20, every: 5}"),
    ("sma_cross", "{fast: 5, slow: 20, quote_amount: 50}"),
    ("rsi_reversion", "{period: 14, quote_amount: 50}"),
    ("grid", "{lower: 40000, upper: 60000, levels: 6, amount: 0.001}"),
)
ROUTES = (
    "/api/v1/fleet",
    "/api/v1/fleet/bots",
    "/api/v1/fleet/bots?sort=last_tick_at&order=desc&offset=5000",
    "/api/v1/fleet/bots?label=group-3&status=running",
    "/api/v1/fleet/bots?q=bot-07&limit=100",
)


def write_bots(folder: Path, count: int) -> None:
    """`count` bot files of the four built-in strategies, labelled by group of ten."""
    folder.mkdir(parents=True)
    for i in range(count):
        name, params = STRATEGIES[i % len(STRATEGIES)]
        (folder / f"bot-{i:05d}.yaml").write_text(
            f"name: bot-{i:05d}\nexchange: simulator\nsymbol: BTC/USDT\ncheck_interval: 60s\n"
            f"strategy:\n  name: {name}\n  params: {params}\n"
            f"labels: [bulk, group-{i % 10}]\n"
        )


def timed(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of one `botengine` command, and its result (which must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("botengine")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"botengine {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed, done


def fill_fleet(db_url: str, count: int) -> None:
    """Store bots up to `count` (rows only, no chains), with ticks and fills for some."""
    from sqlmodel import Session, func, select

    from engine.config import parse_bot_config
    from engine.db import engine_for, session_scope
    from engine.lifecycle import stored_config
    from engine.models import Bot, BotStatus, Fill, Order, Tick

    db = engine_for(db_url)
    with Session(db) as session:
        have = session.exec(select(func.count()).select_from(Bot)).one()
    template = parse_bot_config(
        "name: x\nexchange: simulator\nsymbol: BTC/USDT\nstrategy: {name: dca, params:"
        " {quote_amount: 20}}\nlabels: [fleet, group-3]\n",
        "fleet.yaml",
    )
    now = datetime.now(UTC)
    statuses = (BotStatus.RUNNING, BotStatus.RUNNING, BotStatus.PAUSED, BotStatus.ERROR)
    with session_scope(db) as session:
        for i in range(have, count):
            name = f"fleet-{i:05d}"
            values = stored_config(template.model_copy(update={"name": name}), "bench")
            values["config"]["name"] = name
            session.add(
                Bot(name=name, status=statuses[i % 4], last_tick_at=now, **values)  # type: ignore[arg-type]
            )
            for slot in range(3):
                at = now - timedelta(seconds=60 * (3 - slot))
                session.add(
                    Tick(
                        bot=name,
                        generation=1,
                        slot=slot,
                        due_at=at,
                        started_at=at,
                        finished_at=at,
                        lateness_ms=1.5,
                        duration_ms=1.0,
                        outcome="ok",
                    )
                )
            order = Order(
                client_order_id=f"bench-{name}",
                bot=name,
                generation=1,
                slot=0,
                intent_index=0,
                exchange="simulator",
                symbol="BTC/USDT",
                side="buy",
                type="market",
                amount=0.001,
                status="closed",
                filled=0.001,
            )
            session.add(order)
            session.flush()
            assert order.id is not None
            session.add(
                Fill(
                    order_id=order.id,
                    bot=name,
                    symbol="BTC/USDT",
                    side="buy",
                    amount=0.001,
                    price=50_000.0,
                    fee=0.05,
                    fee_currency="USDT",
                    filled_at=now,
                )
            )


def time_routes(calls: int) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each fleet route, through the real app in process."""
    from fastapi.testclient import TestClient

    from engine.api import create_app
    from engine.settings import get_settings

    os.environ["API_TOKEN"] = TOKEN
    get_settings.cache_clear()
    figures = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(migrate=False), headers=headers) as client:
        for route in ROUTES:
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                response = client.get(route)
                times.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            figures[route] = {
                "p50_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
            }
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print them, and write the JSON next to the other results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__)
    parser.add_argument("--bots", type=int, default=1000, help="bot files to start")
    parser.add_argument("--fleet", type=int, default=10_000, help="bots stored for the API")
    parser.add_argument("--calls", type=int, default=20, help="calls per API route")
    args = parser.parse_args(argv)
    with open_stack(log_level="WARNING") as stack:
        folder = stack.workdir / "bots"
        write_bots(folder, args.bots)
        env = stack.env
        validate_s, _ = timed(env, "validate", str(folder))
        start_s, started = timed(env, "start-bot", str(folder))
        again_s, _ = timed(env, "start-bot", str(folder))
        stop_s, stopped = timed(env, "stop-bot", "--label", "bulk")
        fill_fleet(stack.db_url, args.fleet)
        routes = time_routes(args.calls)
    summary = started.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = {
        "bots": args.bots,
        "validate_s": round(validate_s, 2),
        "start_s": round(start_s, 2),
        "start_again_s": round(again_s, 2),
        "stop_by_label_s": round(stop_s, 2),
        "start_summary": summary,
        "stop_summary": stopped.stdout.strip().splitlines()[-1],
        "fleet_bots": args.fleet,
        "routes": routes,
        "target_start_s": START_TARGET_S,
        "ok": validate_s + start_s < START_TARGET_S,
    }
    print(f"{args.bots} bot files, one command each (process start-up included):")
    print(f"  validate {validate_s:.2f} s, start {start_s:.2f} s ({summary})")
    print(f"  start again (all unchanged) {again_s:.2f} s, stop --label {stop_s:.2f} s")
    verdict = "yes" if result["ok"] else "NO"
    print(
        f"  validated and started in {validate_s + start_s:.2f} s "
        f"(target < {START_TARGET_S:g} s): {verdict}"
    )
    print(f"fleet API with {args.fleet} bots stored, {args.calls} calls each:")
    for route, figure in routes.items():
        print(f"  {figure['p50_ms']:7.1f} ms p50, {figure['max_ms']:7.1f} ms max  {route}")
    out = ROOT / "benchmarks" / "results" / f"bulk-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
