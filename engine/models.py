"""Database tables (SQLModel). The database is the authority; Redis mirrors hot fields."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Index,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Timezone-aware now in UTC (every stored timestamp is UTC)."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always read back timezone-aware.

    SQLite keeps no zone; without this, values would come back naive on SQLite and
    aware on PostgreSQL.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class BotStatus(StrEnum):
    """A bot's lifecycle state."""

    STOPPED = "stopped"
    RUNNING = "running"
    PAUSED = "paused"
    ERROR = "error"


class TickOutcome(StrEnum):
    """How one tick ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # claimed but not run (another slot of the bot held the lock)


class Bot(SQLModel, table=True):
    """One bot: its validated config, lifecycle state, schedule and counters."""

    __tablename__ = "bots"

    name: str = Field(primary_key=True, max_length=64)
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    config_hash: str = Field(max_length=64)
    source: str | None = None
    status: BotStatus = Field(default=BotStatus.STOPPED, index=True, sa_type=String(16))
    generation: int = 0
    interval_s: float = 60.0
    origin: float = 0.0  # epoch seconds of slot 0 of the current generation
    # Who runs the current generation: None for the fleet's workers, or the foreground
    # process of `botengine run` ("foreground:<host>:<pid>"), whose chain the reconciler
    # must never restore into Redis.
    runner: str | None = Field(default=None, max_length=128)
    # Copies of config fields the fleet is listed, filtered and sorted by, so that a
    # page of 10,000 bots is one indexed query and no JSON is decoded (see listing()).
    strategy: str = Field(default="", max_length=200, index=True)
    exchange: str = Field(default="", max_length=64, index=True)
    symbol: str = Field(default="", max_length=40, index=True)
    labels: str = Field(default="", max_length=600)  # ",a,b," so LIKE '%,a,%' finds one
    next_slot: int = 0
    ticks_ok: int = 0
    ticks_failed: int = 0
    ticks_missed: int = 0
    consecutive_failures: int = 0
    orders_sent: int = 0
    last_tick_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


def listing(config: dict[str, Any]) -> dict[str, str]:
    """The `bots` columns copied from a stored config (strategy, exchange, symbol, labels)."""
    labels = config.get("labels") or []
    return {
        "strategy": str(config.get("strategy", {}).get("name", "")),
        "exchange": str(config.get("exchange", "")),
        "symbol": str(config.get("symbol", "")),
        "labels": f",{','.join(labels)}," if labels else "",
    }


class Tick(SQLModel, table=True):
    """The record of one slot that ran (or was skipped) — one row per (bot, gen, slot)."""

    __tablename__ = "ticks"
    __table_args__ = (
        UniqueConstraint("bot", "generation", "slot", name="uq_tick_slot"),
        Index("ix_ticks_bot_started", "bot", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    bot: str = Field(max_length=64)
    generation: int
    slot: int
    due_at: datetime = Field(sa_type=UtcDateTime)
    started_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime = Field(sa_type=UtcDateTime)
    lateness_ms: float
    duration_ms: float
    outcome: TickOutcome = Field(sa_type=String(16))
    error: str | None = None
    orders: int = 0
    worker: str | None = None


class OrderBase(SQLModel):
    """The fields of an order: a row of `orders`, or one an in-memory store keeps (a
    backtest's, which reads them millions of times: plain attributes, no ORM)."""

    id: int | None = Field(default=None, primary_key=True)
    client_order_id: str = Field(max_length=64, unique=True)
    bot: str = Field(max_length=64)
    generation: int
    slot: int
    intent_index: int
    exchange: str = Field(max_length=64)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=4)
    type: str = Field(max_length=8)
    amount: float
    price: float | None = None
    stop_price: float | None = None  # a stop-limit order: rests untriggered until then
    status: str = Field(max_length=16, index=True)
    exchange_order_id: str | None = None
    filled: float = 0.0
    average: float | None = None
    fee: float = 0.0
    fee_currency: str | None = None
    reason: str = ""
    tag: str = ""
    error: str | None = None
    # Set (to why) before a cancel is sent: until the exchange reports the order final,
    # settling looks it up and asks again, whatever became of the first answer.
    cancel_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Order(OrderBase, table=True):
    """One order, written as `pending_submit` before it is sent."""

    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_bot_status", "bot", "status"),)


class Fill(SQLModel, table=True):
    """An execution of (part of) an order; PnL and positions derive from these."""

    __tablename__ = "fills"

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    bot: str = Field(max_length=64, index=True)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=4)
    amount: float
    price: float
    fee: float = 0.0
    fee_currency: str | None = None
    filled_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class StrategyState(SQLModel, table=True):
    """A strategy's persisted state for one bot (JSON)."""

    __tablename__ = "strategy_state"

    bot: str = Field(primary_key=True, max_length=64)
    state: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class PaperBalance(SQLModel, table=True):
    """A paper bot's balance of one currency."""

    __tablename__ = "paper_balances"

    bot: str = Field(primary_key=True, max_length=64)
    currency: str = Field(primary_key=True, max_length=16)
    free: float = 0.0
    used: float = 0.0


class PriceSnapshot(SQLModel, table=True):
    """An hourly price of a tracked symbol."""

    __tablename__ = "price_snapshots"
    __table_args__ = (Index("ix_snap_symbol_taken", "exchange", "symbol", "taken_at"),)

    id: int | None = Field(default=None, primary_key=True)
    exchange: str = Field(max_length=64)
    symbol: str = Field(max_length=32)
    bid: float
    ask: float
    last: float
    taken_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
