"""The backtest's order store: the rows `engine.store.DbOrderStore` keeps in the
database, kept in memory (same `Order` and `Fill` models, same fill-booking rule).

A backtest runs the very order manager the live tick runs (`engine.orders`), so its
client order ids, `pending_submit`, reports and booked fills are those of a live bot.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime
from typing import Any

from engine.domain import OpenOrder, Side
from engine.exchange.gateway import OrderReport, OrderStatus
from engine.models import Fill, OrderBase
from engine.orders import view
from engine.store import LIVE, fill_delta, update_from_report

_LIVE = frozenset(s.value for s in LIVE)


class MemoryOrderStore:
    """Orders and fills of one backtest, in memory."""

    def __init__(self) -> None:
        self.orders: dict[int, OrderBase] = {}
        self.fills: list[Fill] = []
        self._by_cid: dict[str, int] = {}
        self._live: dict[int, OrderBase] = {}  # the few a step settles, in id order
        self._booked: dict[int, tuple[float, float, float]] = {}
        self._position: dict[str, float] = {}
        self._views: dict[int, OpenOrder] = {}  # of live rows, dropped when one changes
        self._last: tuple[OpenOrder, ...] = ()

    def insert(self, values: dict[str, Any]) -> int | None:
        """Add an order; None when its client order id exists already."""
        cid = values["client_order_id"]
        if cid in self._by_cid:
            return None
        key = len(self.orders) + 1
        row = OrderBase(id=key, **values)
        self.orders[key] = row
        self._by_cid[cid] = key
        if row.status in _LIVE:
            self._live[key] = row
        return key

    def by_cid(self, cid: str) -> OrderBase | None:
        """The order with this client order id."""
        key = self._by_cid.get(cid)
        return None if key is None else self.orders[key]

    def set_status(self, row: OrderBase, status: OrderStatus, error: str | None) -> OrderBase:
        """Write a new status and error to the order and to `row`."""
        row.status, row.error = status.value, error
        self._store(row)
        return row

    def request_cancel(self, row: OrderBase, reason: str) -> OrderBase:
        """Record that the order is to be cancelled, and why."""
        row.cancel_reason = reason
        self._store(row)
        return row

    def fills_of(self, bot: str) -> list[Fill]:
        """The bot's fills, in the order they happened."""
        return [f for f in self.fills if f.bot == bot]

    def apply(self, row: OrderBase, report: OrderReport) -> str:
        """Book the fills `report` adds and take its status; returns the status before."""
        assert row.id is not None
        found = self.orders[row.id]
        booked = self._booked.get(row.id, (0.0, 0.0, 0.0))
        delta = fill_delta(report, booked, found.price)
        if delta is not None:
            amount, price, fee = delta
            at = report.timestamp or 0
            fill = Fill(
                id=len(self.fills) + 1,
                order_id=row.id,
                bot=found.bot,
                symbol=found.symbol,
                side=found.side,
                amount=amount,
                price=price,
                fee=fee,
                fee_currency=report.fee_currency,
                filled_at=datetime.fromtimestamp(at / 1000, UTC),
            )
            # In the order they happened (a step may read two of them in another order),
            # as the paper broker books them; equal times keep booking order.
            bisect.insort_right(self.fills, fill, key=lambda f: f.filled_at)
            self._booked[row.id] = (booked[0] + amount, booked[1] + amount * price, booked[2] + fee)
            signed = amount if found.side == Side.BUY.value else -amount
            self._position[found.bot] = self._position.get(found.bot, 0.0) + signed
        before = found.status
        update_from_report(row, report, found.error, found.exchange_order_id)
        self._store(row)
        return before

    def live(self, bot: str) -> list[OrderBase]:
        """The bot's pending, unknown and open orders, oldest first."""
        return [r for r in self._live.values() if r.bot == bot]

    def views(self, rows: list[OrderBase]) -> tuple[OpenOrder, ...]:
        """The rows as a strategy sees them, built once per change of each; the very
        same tuple while nothing changed (the grid reuses its work on it)."""
        out = []
        for row in rows:
            assert row.id is not None
            seen = self._views.get(row.id)
            if seen is None:
                seen = self._views[row.id] = view(row)
            out.append(seen)
        if len(out) == len(self._last) and all(
            a is b for a, b in zip(out, self._last, strict=True)
        ):
            return self._last
        views = tuple(out)
        self._last = views
        return views

    def position(self, bot: str) -> float:
        """Bought minus sold, from the fills booked."""
        return self._position.get(bot, 0.0)

    def _store(self, row: OrderBase) -> None:
        # Rows handed out are the stored ones: the order manager changes a row only to
        # store it right away, as it would write a row it read from a database.
        assert row.id is not None
        self.orders[row.id] = row
        self._views.pop(row.id, None)
        if row.status in _LIVE:
            self._live[row.id] = row
        else:
            self._live.pop(row.id, None)
