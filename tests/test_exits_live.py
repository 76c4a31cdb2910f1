"""Exits, protections and replaces on real workers, against the simulator.

Each test runs a live bot (the simulator's default account) through a real worker; the
simulator replays a price path on a clock the test moves, so the test decides when the
market turns. What the simulator executed is compared with what the database holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session, col, select

from engine import kernel, lifecycle
from engine.config import parse_bot_config
from engine.exchange.simulator import SimulatorConfig, SimulatorServer
from engine.exchange.simulator.config import ManualClock
from engine.exits import ExitRules
from engine.models import Bot, Order, Tick
from engine.orders import position_and_pnl
from engine.risk import RiskLimits
from engine.store import DbOrderStore
from tests.chain_support import Engine
from tests.custom_strategies import BuyThenSell, BuyThenSellParams
from tests.support import wait_for
from tests.test_orders import gateway

pytestmark = pytest.mark.sqlite_only  # the engine's SQL is the same as in every chain test

T0 = 1_900_000_000  # replay time (epoch s) of the first candle
FLAT, DROP = 40_000.0, 38_000.0


def _rows(path: list[tuple[int, float]]) -> list[tuple[int, float, float, float, float, float]]:
    """1-second candles from (seconds after T0, price) steps: each price holds until the
    next step."""
    rows = []
    for (start, price), (end, _) in zip(path, [*path[1:], (path[-1][0] + 600, 0.0)], strict=True):
        for s in range(start, end):
            rows.append(((T0 + s) * 1000, price, price, price, price, 1.0))
    return rows


@pytest.fixture
def market(engine: Engine) -> Iterator[tuple[SimulatorServer, ManualClock]]:
    """A simulator replaying 40,000 until second 100, 38,000 until 200, then a rise to
    44,000 by steps and a fall, from 400 a rise to 42,000 and a fall to 41,500; its
    clock starts at second 10 and the test moves it."""
    path = [
        (0, FLAT),
        (100, DROP),
        (200, FLAT),
        (300, 40_500.0),
        (310, 41_500.0),
        (320, 42_500.0),
        (330, 44_000.0),
        (340, 43_800.0),
        (350, 43_500.0),
        (360, 43_000.0),
        (400, FLAT),
        (450, 42_000.0),
        (500, 41_500.0),
        (600, DROP),
    ]
    clock = ManualClock((T0 + 10) * 1000)
    config = SimulatorConfig(replay={"BTCUSDT": _rows(path)}, clock=clock)
    with SimulatorServer(config, port=0) as server:
        engine.env["SIMULATOR_URL"] = server.url
        engine.rt.settings = engine.rt.settings.model_copy(update={"simulator_url": server.url})
        yield server, clock


def _start(engine: Engine, name: str, extra: str) -> None:
    text = (
        f"name: {name}\nexchange: simulator\nmode: live\nsymbol: BTC/USDT\ncheck_interval: 1s\n"
        "strategy: {name: 'tests.custom_strategies:BuyOnce', params: {quote_amount: 400}}\n" + extra
    )
    lifecycle.start(engine.rt, parse_bot_config(text, f"{name}.yaml"))


def _worker(engine: Engine, name: str) -> Any:
    proc = engine.procs.worker(name)
    engine.procs.wait_ready([proc], "worker.ready")
    return proc


def _orders(engine: Engine, bot: str) -> list[Order]:
    with Session(engine.rt.db) as session:
        return list(session.exec(select(Order).where(Order.bot == bot).order_by(col(Order.id))))


def _position(engine: Engine, bot: str) -> float:
    """What the bot holds after fills and the fees the exchange took in base."""
    return position_and_pnl(engine.rt.db, bot).position


def _bought(engine: Engine, bot: str) -> bool:
    return any(o.side == "buy" and o.status == "closed" for o in _orders(engine, bot))


def _sim_sells(server: SimulatorServer) -> list[dict[str, Any]]:
    return [o for o in server.orders() if o["side"] == "SELL"]


def _agree(engine: Engine, server: SimulatorServer, bot: str) -> None:
    """Every order the simulator executed is in the database with its status, and the
    database sent nothing the simulator does not know."""
    sim = {o["clientOrderId"]: o for o in server.orders()}
    rows = {o.client_order_id: o for o in _orders(engine, bot) if o.status != "rejected"}
    assert set(sim) == set(rows)
    names = {"FILLED": "closed", "CANCELED": "canceled", "NEW": "open"}
    assert {c: names[o["status"]] for c, o in sim.items()} == {c: o.status for c, o in rows.items()}


def test_a_stop_loss_sells_once_when_its_answer_is_lost_and_the_streak_pauses_the_bot(
    engine: Engine, market: tuple[SimulatorServer, ManualClock]
) -> None:
    server, clock = market
    _worker(engine, "w1")
    # Given a live bot that bought, with a 3 % stop and a one-loss streak protection
    _start(engine, "sl", "exits: {stop_loss: 3%}\nprotections: {losing_streak: 1}\n")
    assert wait_for(lambda: _bought(engine, "sl"), 20)
    # When the price falls 5 % and the exchange's answer to the sell is lost
    server.add_fault("response_lost", path="/api/v3/order", method="POST", count=1)
    clock.set((T0 + 110) * 1000)
    # Then the bot sold once, knows it sold, and paused with the reason
    assert wait_for(lambda: _status(engine, "sl")[0] == "paused", 30)
    assert len(_sim_sells(server)) == 1
    sells = [o for o in _orders(engine, "sl") if o.side == "sell"]
    assert [(o.tag, o.status) for o in sells] == [("exit:stop_loss", "closed")]
    assert abs(_position(engine, "sl")) < 1e-9
    _, reason = _status(engine, "sl")
    assert reason is not None
    assert reason.startswith("losing_streak: 1 losing trades in a row")
    _agree(engine, server, "sl")
    # And nothing ticks or trades after the pause
    ticks, orders = _ticks(engine, "sl"), len(server.orders())
    clock.set((T0 + 20) * 1000)  # back above the entry: a running buyer would act
    wait_for(lambda: False, 2)
    assert _ticks(engine, "sl") == ticks
    assert len(server.orders()) == orders
    # Resume is explicit, and starts the protections afresh
    lifecycle.resume(engine.rt, "sl")
    assert wait_for(lambda: _ticks(engine, "sl") > ticks + 2, 15)
    assert _status(engine, "sl")[0] == "running"


def test_a_trailing_stop_follows_the_price_up_and_sells_on_the_way_down(
    engine: Engine, market: tuple[SimulatorServer, ManualClock]
) -> None:
    server, clock = market
    clock.set((T0 + 210) * 1000)
    _worker(engine, "w1")
    _start(
        engine,
        "trail",
        "exits: {stop_loss: 5%, trailing_stop: {activate: 2%, distance: 1%}}\n",
    )
    assert wait_for(lambda: _bought(engine, "trail"), 20)
    # When the price climbs step by step (the bot ticks at each) and then turns
    for second in (315, 335, 345):
        seen = _ticks(engine, "trail")
        clock.set((T0 + second) * 1000)
        assert wait_for(lambda n=seen: _ticks(engine, "trail") >= n + 2, 15)  # type: ignore[misc]
        assert _sim_sells(server) == []  # 43,800 is less than 1 % under 44,000
    clock.set((T0 + 355) * 1000)  # 43,500: 1.1 % under the high
    # Then it sold once, at the first price 1 % under the high
    assert wait_for(lambda: len(_sim_sells(server)) == 1, 15)
    wait_for(lambda: False, 2)
    sells = _sim_sells(server)
    assert len(sells) == 1
    assert float(sells[0]["price"] or 0) in (0.0, 43_500.0)
    rows = [o for o in _orders(engine, "trail") if o.side == "sell"]
    assert [(o.tag, o.status, o.average) for o in rows] == [
        ("exit:trailing_stop", "closed", 43_500.0)
    ]
    _agree(engine, server, "trail")


def test_a_worker_killed_between_the_trigger_and_the_order_sells_once(
    engine: Engine, market: tuple[SimulatorServer, ManualClock]
) -> None:
    server, clock = market
    engine.procs.beat()
    _worker(engine, "w1")
    _start(engine, "kill", "exits: {stop_loss: 3%}\n")
    assert wait_for(lambda: _bought(engine, "kill"), 20)
    # When the stop fires and its order hangs on the way (never executed) ...
    server.add_fault("timeout", path="/api/v3/order", method="POST", count=1, hold_s=30)
    clock.set((T0 + 110) * 1000)
    assert wait_for(lambda: any(o.side == "sell" for o in _orders(engine, "kill")), 20)
    # ... and the worker is SIGKILLed right then
    engine.procs.kill("w1")
    assert _sim_sells(server) == []
    _worker(engine, "w2")
    # Then the new worker resolves the order left behind by looking it up, fires again
    # once the exchange says it never arrived, and sells exactly once
    assert wait_for(lambda: len(_sim_sells(server)) == 1 and _position(engine, "kill") < 1e-9, 60)
    wait_for(lambda: False, 3)
    assert len(_sim_sells(server)) == 1
    rows = [(o.status, o.error) for o in _orders(engine, "kill") if o.side == "sell"]
    assert rows == [("rejected", "never reached the exchange"), ("closed", None)]
    _agree(engine, server, "kill")


def test_a_replace_whose_cancel_answer_is_lost_leaves_database_and_exchange_agreeing(
    engine: Engine, market: tuple[SimulatorServer, ManualClock]
) -> None:
    server, _ = market
    _worker(engine, "w1")
    text = (
        "name: rq\nexchange: simulator\nmode: live\nsymbol: BTC/USDT\ncheck_interval: 1s\n"
        "strategy: {name: 'tests.custom_strategies:Requote', params: {below: 0.5}}\n"
    )
    lifecycle.start(engine.rt, parse_bot_config(text, "rq.yaml"))
    assert wait_for(lambda: len(_orders(engine, "rq")) >= 2, 20)
    # When the exchange cancels an order but its answer is lost
    server.add_fault("response_lost", path="/api/v3/order", method="DELETE", count=1)
    assert wait_for(lambda: len(_orders(engine, "rq")) >= 6, 30)
    lifecycle.stop(engine.rt, "rq")
    # Then every replaced order is cancelled on both sides, one rests, nothing is lost
    rows = _orders(engine, "rq")
    assert [o.status for o in rows].count("open") == 1
    assert all(o.status == "canceled" and o.cancel_reason == "strategy" for o in rows[:-1])
    _agree(engine, server, "rq")


def test_an_on_exchange_stop_follows_the_position_and_protects_it_while_the_engine_is_down(
    engine: Engine, market: tuple[SimulatorServer, ManualClock]
) -> None:
    server, clock = market
    clock.set((T0 + 410) * 1000)
    engine.procs.beat()
    _worker(engine, "w1")
    # Given a live bot whose stop rests on the exchange
    _start(
        engine,
        "onx",
        "exits: {stop_loss: 3%, trailing_stop: {activate: 2%, distance: 1%}, on_exchange: true}\n",
    )

    def stops(status: str = "NEW") -> list[dict[str, Any]]:
        return [
            o for o in server.orders() if o["type"] == "STOP_LOSS_LIMIT" and o["status"] == status
        ]

    # Then a stop-limit for the whole position rests 3 % under the entry
    assert wait_for(lambda: len(stops()) == 1, 20)
    held = _position(engine, "onx")
    assert float(stops()[0]["origQty"]) == pytest.approx(held, abs=1e-5)
    assert float(server.sim.order(stops()[0]["clientOrderId"])["stopPrice"]) == 38_800.0  # type: ignore[index]
    # And when the price rises past the trailing stop's activation the stop moves up
    clock.set((T0 + 455) * 1000)
    assert wait_for(lambda: len(stops()) == 1 and len(stops("CANCELED")) == 1, 20)
    assert float(server.sim.order(stops()[0]["clientOrderId"])["stopPrice"]) == 41_580.0  # type: ignore[index]
    # When every worker is gone and the price falls through the stop
    engine.procs.kill("w1")
    clock.set((T0 + 505) * 1000)
    # Then the exchange sold while the engine was down, once
    assert wait_for(lambda: len(stops("FILLED")) == 1, 10)
    assert [o["status"] for o in _sim_sells(server)] == ["CANCELED", "FILLED"]
    # And once a worker is back the database knows it, and nothing more is sold
    _worker(engine, "w2")
    assert wait_for(lambda: _position(engine, "onx") < 1e-9, 30)

    def exits() -> list[dict[str, Any]]:
        records = engine.procs.log_records("w2")
        return [r for r in records if r.get("event") == "exit.trailing_stop"]

    assert wait_for(lambda: len(exits()) == 1, 45)  # once the chain is back on w2
    wait_for(lambda: False, 2)
    assert [o["status"] for o in _sim_sells(server)] == ["CANCELED", "FILLED"]
    rows = [(o.tag, o.status) for o in _orders(engine, "onx") if o.side == "sell"]
    assert rows == [("stop:stop_loss", "canceled"), ("stop:trailing_stop", "closed")]
    assert len(exits()) == 1
    assert exits()[0]["on_exchange"] is True
    _agree(engine, server, "onx")


def _status(engine: Engine, bot: str) -> tuple[str, str | None]:
    with Session(engine.rt.db) as session:
        row = session.get(Bot, bot)
        assert row is not None
        return row.status, row.last_error


def _ticks(engine: Engine, bot: str) -> int:
    with Session(engine.rt.db) as session:
        return len(session.exec(select(Tick.id).where(Tick.bot == bot)).all())


def test_a_strategy_sell_cancels_the_protective_stop_first(db: Any, redis_client: Any) -> None:
    # Given the kernel on the simulator (real ccxt client and database), a bot with its
    # stop on the exchange that buys, holds, then sells by its own decision
    clock = ManualClock((T0 + 10) * 1000)
    config = SimulatorConfig(replay={"BTCUSDT": _rows([(0, FLAT)])}, clock=clock)
    with SimulatorServer(config, port=0) as server:
        gw = gateway(server, redis_client)
        store = DbOrderStore(db)
        state: dict[str, Any] = {}
        exits = ExitRules(stop_loss=0.03, on_exchange=True)

        def step(slot: int) -> kernel.Result:
            nonlocal state
            turn = kernel.Turn(
                bot="rt",
                generation=1,
                slot=slot,
                now_ms=(T0 + 10 + slot) * 1000,
                symbol="BTC/USDT",
                timeframe="1m",
                strategy=BuyThenSell(BuyThenSellParams(sell_at=2)),
                risk=RiskLimits(),
                gateway=gw,
                store=store,
                fence=lambda: None,
                exits=exits,
            )
            result = kernel.step(turn, state)
            state = result.state if result.state is not None else state
            return result

        def sim(kind: str) -> list[str]:
            return [o["status"] for o in server.orders() if o["type"] == kind]

        # When it buys, the stop goes on the exchange with it; a step later nothing moves
        assert step(0).sent == 2
        assert sim("STOP_LOSS_LIMIT") == ["NEW"]
        assert step(1).sent == 0
        # Then its sell cancels the stop first (the stop holds the base), and is sent
        result = step(2)
        assert result.sent == 1
        assert result.cancels == 1
        assert sim("STOP_LOSS_LIMIT") == ["CANCELED"]
        assert sim("MARKET") == ["FILLED", "FILLED"]
        # And with no position left no new stop is placed
        assert step(3).sent == 0
        assert sim("STOP_LOSS_LIMIT") == ["CANCELED"]
