"""What a chaos run must not break, checked from the database, worker logs and the
simulator's order log. Each check returns a `Check`; the run fails if any is not ok.

The database's unique constraint on (bot, generation, slot) would hide a slot that ran
twice, so runs are counted from `tick.started` log lines instead; likewise the exchange
refusing a reused client order id would hide a second send, so the simulator wrapper
counts those refusals (benchmarks/simproc.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.metrics import TickRow
from engine.orders import ledger

# Orders in these states may have reached the exchange; `rejected` ones never did.
UNRESOLVED = ("pending_submit", "unknown")


@dataclass
class Check:
    """One invariant: whether it held, and the figures that show it."""

    name: str
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


def no_slot_twice(started: Counter[tuple[str, int, int]]) -> Check:
    """No (bot, generation, slot) logged `tick.started` twice, across every worker."""
    twice = {f"{b}:{g}:{s}": n for (b, g, s), n in started.items() if n > 1}
    return Check(
        "no_slot_ran_twice",
        not twice,
        {"slots_started": len(started), "ran_twice": dict(list(twice.items())[:20])},
    )


def no_order_sent_twice(
    duplicate_rejections: int, exchange_ids: Sequence[str], db_ids: Sequence[str]
) -> Check:
    """No client order id reached the exchange twice, and each maps to one DB order."""
    on_exchange = Counter(exchange_ids)
    in_db = Counter(db_ids)
    repeated = [cid for cid, n in on_exchange.items() if n > 1]
    multi_db = [cid for cid in on_exchange if in_db[cid] > 1]
    ok = duplicate_rejections == 0 and not repeated and not multi_db
    return Check(
        "no_client_order_id_sent_twice",
        ok,
        {
            "duplicate_rejections_at_exchange": duplicate_rejections,
            "repeated_on_exchange": repeated[:20],
            "exchange_orders_with_2_db_rows": multi_db[:20],
        },
    )


def db_matches_exchange(db_orders: Sequence[tuple[str, str]], exchange_ids: Sequence[str]) -> Check:
    """After a final reconciliation: non-rejected DB orders == exchange orders, and no
    order is left pending or unknown. `db_orders` is (client order id, status)."""
    sent = {cid for cid, status in db_orders if status != "rejected"}
    exchange = set(exchange_ids)
    unresolved = [cid for cid, status in db_orders if status in UNRESOLVED]
    only_db, only_exchange = sorted(sent - exchange), sorted(exchange - sent)
    ok = not only_db and not only_exchange and not unresolved
    statuses = Counter(status for _, status in db_orders)
    return Check(
        "db_orders_equal_exchange_orders",
        ok,
        {
            "db_orders": len(db_orders),
            "db_statuses": dict(statuses),
            "exchange_orders": len(exchange),
            "only_in_db": only_db[:20],
            "only_on_exchange": only_exchange[:20],
            "unresolved": unresolved[:20],
        },
    )


def recovered_after_faults(
    faults: Sequence[tuple[str, float]],
    ticks: Sequence[TickRow],
    bots: Sequence[str],
    bound_s: float,
    stopped_at: float,
    *,
    trading: bool,
) -> Check:
    """After each fault every bot ticked again within `bound_s` seconds.

    `trading=False`: any tick counts (the chain is alive). `trading=True`: only ticks
    that ran the strategy; a `skipped` tick (claimed while the bot's lock was held) did
    not trade, and a dead worker's lock is exactly what can keep a bot skipping.
    """
    by_bot: dict[str, list[float]] = {b: [] for b in bots}
    for t in ticks:
        if t.bot in by_bot and not (trading and t.outcome == "skipped"):
            by_bot[t.bot].append(t.started)
    for starts in by_bot.values():
        starts.sort()
    results = []
    ok = True
    for kind, at in faults:
        waits = {}
        for bot, starts in by_bot.items():
            after = next((s for s in starts if s > at), None)
            waits[bot] = (after - at) if after is not None and after <= stopped_at else None
        late = sorted(b for b, w in waits.items() if w is None or w > bound_s)
        known = [w for w in waits.values() if w is not None]
        ok = ok and not late
        results.append(
            {
                "fault": kind,
                "at": round(at, 3),
                "slowest_bot_s": round(max(known), 1) if known else None,
                "not_within_bound": late[:20],
            }
        )
    name = (
        "every_bot_traded_again_within_bound" if trading else "every_bot_ticked_again_within_bound"
    )
    return Check(name, ok, {"bound_s": bound_s, "faults": results})


def no_order_after_stop(
    exchange_orders: Sequence[dict[str, Any]], owner: dict[str, str], stopped_ms: dict[str, float]
) -> Check:
    """No order reached the exchange after its bot's stop returned."""
    late = []
    for order in exchange_orders:
        bot = owner.get(order["clientOrderId"])
        if bot is not None and bot in stopped_ms and order["time"] > stopped_ms[bot]:
            late.append(
                {
                    "clientOrderId": order["clientOrderId"],
                    "bot": bot,
                    "after_stop_ms": round(order["time"] - stopped_ms[bot], 1),
                }
            )
    return Check("no_order_after_stop", not late, {"late_orders": late[:20]})


def no_bot_in_error(statuses: dict[str, str]) -> Check:
    """Transient faults alone never move a bot to `error` (only N failures in a row or
    bad credentials should)."""
    errored = sorted(b for b, s in statuses.items() if s == "error")
    return Check("no_bot_moved_to_error", not errored, {"errored": errored[:20]})


def exits_never_sold_twice(fills: dict[str, list[Any]]) -> Check:
    """No exit bot ever sold more than it held: its position after every fill, in the
    order they happened (net of fees taken in base), stays at or above zero. An exit or
    a stop sent twice would sell base the bot no longer has (the simulator's account
    holds more, so the exchange would not refuse it)."""
    oversold = {}
    sells = 0
    for bot, rows in fills.items():
        lowest = 0.0
        for fill, _, _, position, _ in ledger(rows):
            sells += fill.side == "sell"
            lowest = min(lowest, position)
        if lowest < -1e-6:
            oversold[bot] = lowest
    return Check("exits_never_sold_twice", not oversold, {"sells": sells, "oversold": oversold})


def positions_protected(samples: Sequence[tuple[dict[str, float], dict[str, float]]]) -> Check:
    """Every exit bot holding a position (`on_exchange`) had a stop resting on the
    exchange for it in at least one of the `samples` (positions by bot, base covered by
    its resting stops), taken after the faults."""
    holding = {b for positions, _ in samples for b, p in positions.items() if p > 0}
    bare = sorted(
        b
        for b in holding
        if all(
            positions.get(b, 0.0) > 0 and covered.get(b, 0.0) <= 0 for positions, covered in samples
        )
    )
    positions, covered = samples[-1]
    # A stop covers what can be sold: the bought amount less fees taken in base, rounded
    # down to the lot step (~0.2 % less). Shown: stops short of that by more than 1 %.
    short = {
        b: [round(covered.get(b, 0.0), 8), round(p, 8)]
        for b, p in positions.items()
        if p > 0 and covered.get(b, 0.0) < 0.99 * p
    }
    return Check(
        "on_exchange_positions_protected",
        not bare,
        {"holding": len(holding), "unprotected": bare, "stop_short_last_sample": short},
    )
