"""The tick chain through real Celery workers, real Redis and the simulator.

Each test states its bound. Timing here is generous on purpose (a noisy 2-core box):
what is asserted is protocol behaviour — exactly one run per slot, chains that stop,
resume and survive crashes — not speed; speed lives in `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from engine import lifecycle
from engine.lifecycle import Change, Result
from engine.models import BotStatus
from tests.chain_support import Engine, bot_config, bot_yaml
from tests.conftest import OWNER_KEY
from tests.support import ROOT, bin_path, wait_for

pytestmark = pytest.mark.slow


def _concurrently(n: int, call: Callable[[], Result]) -> list[Result]:
    """Run `call` in `n` threads at once; their results."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: call(), range(n)))


def _assert_exactly_once(eng: Engine, workers: list[str], bots: list[str]) -> None:
    counts = eng.started_counts(workers)
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert not duplicates, f"slots run more than once: {duplicates}"
    for name in bots:
        ticks = eng.ticks(name)
        keys = [(t.generation, t.slot) for t in ticks]
        assert len(keys) == len(set(keys))
        for t in ticks:
            assert counts[(name, t.generation, t.slot)] == 1


def test_twenty_bots_every_slot_runs_exactly_once(engine: Engine) -> None:
    # Given a worker, beat, and 20 bots ticking every second
    engine.procs.worker("w1", concurrency=16)
    engine.procs.beat()
    names = [f"bot{i:02d}" for i in range(20)]
    for name in names:
        lifecycle.start(engine.rt, bot_config(name, interval="1s"))
    # When they run for 15 seconds
    time.sleep(15)
    for name in names:
        lifecycle.stop(engine.rt, name)
    # Then no slot ran twice, and the slots that ran form one chain with few gaps
    _assert_exactly_once(engine, ["w1"], names)
    steady_missed = 0
    for name in names:
        ticks = [t for t in engine.ticks(name) if t.outcome in ("ok", "failed", "skipped")]
        slots = [t.slot for t in ticks]
        assert len(slots) >= 11, f"{name} ran only {len(slots)} ticks in 15 s"
        assert all(t.lateness_ms is not None for t in ticks)
        # Every gap is counted, including a cold start's (first tick loads ccxt markets)
        assert engine.bot(name).ticks_missed == (slots[-1] + 1) - len(slots)
        steady = slots[2:]
        steady_missed += (steady[-1] - steady[0] + 1) - len(steady)
    # And once warm, few slots were missed (catch-up skips at most the odd slot under load)
    assert steady_missed <= len(names) * 2


@pytest.mark.sqlite_only
def test_double_start_sequential_and_concurrent_yields_one_chain(engine: Engine) -> None:
    engine.procs.worker("w1")
    config = bot_config("twice", interval="1s")
    # Given a bot started once
    first = lifecycle.start(engine.rt, config)
    assert first.change is Change.STARTED
    # When it is started again with the same config, sequentially and 8 times at once
    again = lifecycle.start(engine.rt, config)
    results = _concurrently(8, lambda: lifecycle.start(engine.rt, config))
    # Then nothing changed: one generation, one chain
    assert again.change is Change.UNCHANGED
    assert {r.change for r in results} == {Change.UNCHANGED}
    assert engine.bot("twice").generation == first.generation
    time.sleep(6)
    lifecycle.stop(engine.rt, "twice")
    _assert_exactly_once(engine, ["w1"], ["twice"])
    slots = [t.slot for t in engine.ticks("twice")]
    assert slots == sorted(set(slots))
    assert len(slots) >= 4


@pytest.mark.sqlite_only
def test_concurrent_first_starts_of_a_new_bot_yield_one_chain(engine: Engine) -> None:
    engine.procs.worker("w1")
    config = bot_config("racer", interval="1s")
    results = _concurrently(8, lambda: lifecycle.start(engine.rt, config))
    changes = Counter(r.change for r in results)
    assert changes == {Change.STARTED: 1, Change.UNCHANGED: 7}
    time.sleep(4)
    lifecycle.stop(engine.rt, "racer")
    _assert_exactly_once(engine, ["w1"], ["racer"])
    assert {t.generation for t in engine.ticks("racer")} == {1}


@pytest.mark.sqlite_only  # the stop CAS on PostgreSQL: test_api, test_lifecycle paths
def test_stop_during_a_tick_sends_no_order_afterwards_and_restart_works(
    engine: Engine, simulator: Any
) -> None:
    engine.procs.worker("w1")
    # Given a live bot on the simulator that buys every tick, and an exchange slow enough
    # (300 ms a request) that a stop lands in the middle of a tick's run
    simulator.set_faults({"latency_ms": 300})
    config = bot_config("stopper", interval="1s", params="quote_amount: 20", extra="mode: live\n")
    lifecycle.start(engine.rt, config)
    assert wait_for(lambda: len(simulator.orders()) >= 2, 30)
    # When it is stopped
    result = lifecycle.stop(engine.rt, "stopper")
    stopped_at = time.time() * 1000
    assert result.change is Change.STOPPED
    assert result.drained
    time.sleep(4)
    # Then no order reached the exchange after stop returned
    late = [o for o in simulator.orders() if o["time"] > stopped_at]
    assert late == []
    # And the database holds exactly the exchange's orders
    exchange_ids = {o["clientOrderId"] for o in simulator.orders()}
    sent = {o.client_order_id for o in engine.orders("stopper") if o.status != "rejected"}
    assert sent == exchange_ids
    # And the chain ended
    count = len(engine.ticks("stopper"))
    time.sleep(2.5)
    assert len(engine.ticks("stopper")) == count
    # And it starts again, with a new generation
    simulator.set_faults({})
    again = lifecycle.start(engine.rt, config)
    assert again.change is Change.STARTED
    assert wait_for(
        lambda: any(t.generation == again.generation for t in engine.ticks("stopper")), 15
    )
    lifecycle.stop(engine.rt, "stopper")


def test_sigkilled_worker_is_replaced_and_every_bot_resumes(engine: Engine) -> None:
    # Given 10 bots on a worker, with beat running the reconciler
    engine.procs.worker("w1")
    engine.procs.beat()
    names = [f"k{i}" for i in range(10)]
    for name in names:
        lifecycle.start(engine.rt, bot_config(name, interval="1s"))
    assert wait_for(lambda: all(engine.bot(n).ticks_ok >= 3 for n in names), 30)
    # When the worker is SIGKILLed mid-run and a new one starts
    engine.procs.kill("w1")
    killed_at = time.time()
    engine.procs.worker("w2")

    # Then every bot ticks again within 30 s (heartbeat expiry + reconcile + grace)
    def resumed() -> bool:
        return all(
            any(t.started_at.timestamp() > killed_at + 0.5 for t in engine.ticks(n)) for n in names
        )

    assert wait_for(resumed, 30), "some bots did not resume within 30 s"
    resumed_after = time.time() - killed_at
    time.sleep(3)
    for name in names:
        lifecycle.stop(engine.rt, name)
    # And no slot ran twice across both workers
    _assert_exactly_once(engine, ["w1", "w2"], names)
    print(f"all 10 bots resumed {resumed_after:.1f} s after SIGKILL")


def test_redis_flushed_every_running_bot_resumes(engine: Engine) -> None:
    engine.procs.worker("w1")
    engine.procs.beat()
    names = [f"f{i}" for i in range(5)]
    for name in names:
        lifecycle.start(engine.rt, bot_config(name, interval="1s"))
    assert wait_for(lambda: all(engine.bot(n).ticks_ok >= 2 for n in names), 30)
    # When the engine's Redis database loses everything (queued messages, claims, mirror)
    client = redis.Redis.from_url(engine.rt.settings.redis_url)
    owner = client.get(OWNER_KEY)
    client.flushdb()
    if owner is not None:
        client.set(OWNER_KEY, owner)
    flushed_at = time.time()

    # Then every running bot ticks again within 20 s
    def resumed() -> bool:
        return all(
            any(t.started_at.timestamp() > flushed_at + 0.5 for t in engine.ticks(n)) for n in names
        )

    assert wait_for(resumed, 20)
    for name in names:
        lifecycle.stop(engine.rt, name)
    _assert_exactly_once(engine, ["w1"], names)


@pytest.mark.sqlite_only
def test_raising_strategy_keeps_the_chain_then_errors_after_n_failures(engine: Engine) -> None:
    engine.procs.worker("w1")
    # Given a bot whose strategy raises on every tick (MAX_CONSECUTIVE_FAILURES=3)
    lifecycle.start(
        engine.rt, bot_config("raiser", strategy="tests.custom_strategies:Raising", params="")
    )
    # When it ticks, then failures are recorded tick after tick, and the third stops it
    assert wait_for(lambda: engine.bot("raiser").status == BotStatus.ERROR, 20)
    bot = engine.bot("raiser")
    ticks = engine.ticks("raiser")
    assert [t.outcome for t in ticks] == ["failed"] * 3
    assert "boom" in (ticks[0].error or "")
    assert "3 failure(s) in a row" in (bot.last_error or "")
    # And the chain ended there
    time.sleep(2.5)
    assert len(engine.ticks("raiser")) == 3


@pytest.mark.sqlite_only
def test_flaky_strategy_failures_do_not_break_the_chain(engine: Engine) -> None:
    engine.procs.worker("w1")
    lifecycle.start(
        engine.rt,
        bot_config("flaky", strategy="tests.custom_strategies:EveryOtherFails", params=""),
    )
    assert wait_for(lambda: len(engine.ticks("flaky")) >= 6, 20)
    lifecycle.stop(engine.rt, "flaky")
    outcomes = [t.outcome for t in engine.ticks("flaky")]
    assert "failed" in outcomes
    assert "ok" in outcomes
    assert engine.bot("flaky").status == BotStatus.STOPPED


@pytest.mark.sqlite_only
def test_custom_strategy_runs_on_paper_and_in_backtest_unchanged(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a strategy class in a user's module, named by dotted path
    spec = "tests.custom_strategy_example:BuyEveryTick"
    engine.procs.worker("w1")
    # When it runs as a paper bot through a real worker
    lifecycle.start(engine.rt, bot_config("custom", strategy=spec, params="quote_amount: 15"))
    assert wait_for(lambda: engine.bot("custom").orders_sent >= 2, 20)
    lifecycle.stop(engine.rt, "custom")
    filled = [o for o in engine.orders("custom") if o.status == "closed"]
    assert filled
    assert all(o.side == "buy" for o in filled)
    # And through `botengine backtest` over the sample candles
    config = tmp_path / "custom.yaml"
    config.write_text(bot_yaml("custom", strategy=spec, params="quote_amount: 15"))
    result = subprocess.run(
        [
            bin_path("botengine"),
            "backtest",
            str(config),
            "--data",
            str(ROOT / "data" / "sample_btc_usdt_1h.csv"),
            "--to",
            "2024-01-03",
            "--out",
            str(tmp_path / "bt"),
        ],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then both ran the same class: the backtest bought on every candle too
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "bt" / "summary.json").read_text())
    assert summary["metrics"]["trades"] > 10
    assert (tmp_path / "bt" / "equity.png").stat().st_size > 1000
