"""Starting and stopping many bots: configs, paced lifecycle starts, bulk starts, stops.

Bots are started spread evenly over one interval (bot i at phase i * S / N), the way
bots started by people over time end up, so a run measures steady load rather than a
thundering herd every S seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from sqlalchemy import insert

from engine import lifecycle
from engine.config import BotConfig
from engine.coordination import Mirror
from engine.models import Bot, BotStatus, utcnow
from engine.runtime import Runtime, send_ticks
from engine.schedule import parks

# The simulator's USDT markets: bots spread over them round-robin.
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT")
BULK_BATCH = 500


# The simulator's long-run price level of each (engine.exchange.simulator.config).
LEVELS = {"BTC/USDT": 60_000.0, "ETH/USDT": 3_000.0, "SOL/USDT": 150.0, "BNB/USDT": 600.0}
MIXED = ("dca", "sma_cross", "rsi_reversion", "grid")


def bot_config(
    name: str,
    interval_s: float,
    symbol: str,
    *,
    strategy: str = "dca",
    dca_every: int = 10,
    dca_offset: int = 0,
    live: bool = False,
    quote_amount: float = 20.0,
) -> BotConfig:
    """A bot on the simulator (paper by default, live on the simulator's account)
    running `strategy`: dca, sma_cross, rsi_reversion or grid, with small orders."""
    level = LEVELS.get(symbol, 100.0)
    params: dict[str, object] = {
        "dca": {"quote_amount": quote_amount, "every": dca_every, "offset": dca_offset},
        "sma_cross": {"fast": 5, "slow": 20, "quote_amount": quote_amount},
        "rsi_reversion": {"period": 14, "oversold": 45, "overbought": 55, "quote_amount": 20},
        # A tight grid, so that the random walk crosses its levels within minutes.
        "grid": {
            "lower": round(level * 0.99, 2),
            "upper": round(level * 1.01, 2),
            "levels": 6,
            "amount": float(f"{quote_amount / level:.5f}"),
        },
    }[strategy]
    balances = {"USDT": 1_000_000_000.0}
    extra: dict[str, object] = {}
    if strategy == "grid":  # it sells above the price from the start, and places 6 at once
        balances[symbol.split("/")[0]] = 1_000_000.0
        extra["risk"] = {"max_orders_per_tick": 6}
    return BotConfig.model_validate(
        {
            "name": name,
            "exchange": "simulator",
            "mode": "live" if live else "paper",
            "symbol": symbol,
            "check_interval": interval_s,
            "strategy": {"name": strategy, "params": params},
            "paper": {"balances": balances},
            **extra,
        }
    )


def fleet(
    prefix: str,
    n: int,
    interval_s: float,
    *,
    dca_every: int = 10,
    live_every: int = 0,
    strategies: str = "dca",
) -> list[BotConfig]:
    """`n` bots named `<prefix>-00000...`; every `live_every`-th one is live (0: none);
    `strategies` "mixed" runs the four built-ins in turn, else every bot runs that one.

    Their DCA cadences are staggered (bot i first buys on tick i mod `dca_every`), so a
    tenth of the ticks place an order from the first interval on, as in the steady
    state, rather than every bot buying within the first interval.
    """
    return [
        bot_config(
            f"{prefix}-{i:05d}",
            interval_s,
            SYMBOLS[i % len(SYMBOLS)],
            strategy=MIXED[(i // len(SYMBOLS)) % len(MIXED)]
            if strategies == "mixed"
            else strategies,
            dca_every=dca_every,
            dca_offset=i % dca_every,
            live=bool(live_every) and i % live_every == 0,
        )
        for i in range(n)
    ]


@dataclass
class StartReport:
    """How starting a fleet went."""

    mode: str
    bots: int
    seconds: float  # from the first start call to the last one returning
    errors: int
    max_lag_s: float  # how far behind its planned phase the slowest start was

    @property
    def per_second(self) -> float:
        """Starts completed per second."""
        return self.bots / self.seconds if self.seconds > 0 else 0.0


def start_paced(
    rt: Runtime,
    configs: Sequence[BotConfig],
    spread_s: float,
    threads: int,
    start: Callable[[Runtime, BotConfig], object] = lifecycle.start,
) -> StartReport:
    """Call `lifecycle.start` for each bot at its phase (i * spread / n) from a pool.

    A start that cannot keep its phase runs as soon as a thread is free; the lag is
    reported, since it bunches the schedule up.
    """
    t0 = time.time()
    step = spread_s / max(len(configs), 1)
    lags: list[float] = []
    errors = 0

    def timed(config: BotConfig, planned: float) -> None:
        lags.append(time.time() - planned)
        start(rt, config)

    futures: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-start") as pool:
        for i, config in enumerate(configs):
            planned = t0 + i * step
            delay = planned - time.time()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(timed, config, planned))
        for future in futures:
            if future.exception() is not None:
                errors += 1
    return StartReport(
        "lifecycle", len(configs), time.time() - t0, errors, round(max(lags, default=0.0), 3)
    )


def api_start(base_url: str, token: str) -> Callable[[Runtime, BotConfig], object]:
    """A `start` for `start_paced` that creates and starts each bot over HTTP, as an
    operator's tooling would: `PUT /api/v1/bots/{name}` then `POST .../start`."""
    client = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0
    )

    def start(_: Runtime, config: BotConfig) -> object:
        path = f"/api/v1/bots/{config.name}"
        client.put(path, json=config.model_dump(mode="json")).raise_for_status()
        return client.post(f"{path}/start").raise_for_status()

    return start


def start_bulk(
    rt: Runtime, configs: Sequence[BotConfig], spread_s: float, lead_s: float = 2.0
) -> StartReport:
    """Write running bot rows and mirrors in batches and send or park each slot 0.

    The same end state `lifecycle.start` leaves (generation 1, running, origin, mirror,
    slot 0 sent if due inside the ETA horizon, else parked for the dispatcher), minus
    its per-bot round trips; origins are set ahead (`lead_s` plus the bot's phase), so
    no bot starts late because of the batch.
    """
    t0 = time.time()
    base = t0 + lead_s
    step = spread_s / max(len(configs), 1)
    for lo in range(0, len(configs), BULK_BATCH):
        batch = configs[lo : lo + BULK_BATCH]
        now = utcnow()
        rows = [
            {
                "name": c.name,
                **lifecycle.stored_config(c, "benchmark"),
                "status": BotStatus.RUNNING.value,
                "generation": 1,
                "origin": base + (lo + j) * step,
                "next_slot": 0,
                "created_at": now,
                "updated_at": now,
            }
            for j, c in enumerate(batch)
        ]
        # Mirrors first: a reconciler pass seeing a running row without its mirror
        # would "restore" it and start a second copy of the chain (harmless, since the
        # successor compare-and-set keeps one, but it would cost ticks and skew counts).
        # A parked slot is sent by the dispatcher no earlier than the horizon before its
        # due time, long after its row is written below.
        due_now: list[tuple[str, int, int, float]] = []
        sent_at = rt.clock()
        for row in rows:
            name, origin = str(row["name"]), float(row["origin"])  # type: ignore[arg-type]
            mirror = Mirror("running", 1, origin, float(row["interval_s"]), 0)  # type: ignore[arg-type]
            parked = parks(origin, sent_at, rt.settings.eta_horizon_s)
            rt.coordinator.publish(mirror, name, origin, parked=parked)
            if not parked:
                due_now.append((name, 1, 0, origin))
        with rt.db.begin() as conn:
            conn.execute(insert(Bot), rows)
        send_ticks(rt, due_now)
    return StartReport("bulk", len(configs), time.time() - t0, 0, 0.0)


def stop_all(rt: Runtime, names: Sequence[str], threads: int) -> tuple[float, int]:
    """`lifecycle.stop` every bot from a pool; (seconds taken, errors)."""
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-stop") as pool:
        futures = [pool.submit(lifecycle.stop, rt, name) for name in names]
        errors = sum(1 for f in futures if f.exception() is not None)
    return time.time() - t0, errors
