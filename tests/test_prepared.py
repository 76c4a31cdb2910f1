"""Prepared statements read and write exactly what SQLAlchemy Core does, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from engine import prepared
from engine.models import Order, StrategyState
from engine.prepared import Prepared

_orders = Order.__table__  # type: ignore[attr-defined]
_states = StrategyState.__table__  # type: ignore[attr-defined]
NOW = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


def _order(cid: str, status: str = "open") -> dict[str, Any]:
    return {
        "client_order_id": cid,
        "bot": "b1",
        "generation": 1,
        "slot": 0,
        "intent_index": 0,
        "exchange": "paper",
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": 0.5,
        "price": 100.25,
        "status": status,
        "filled": 0.0,
        "created_at": NOW,
        "updated_at": NOW,
    }


def test_rows_match_core_with_types_processed(db: Any) -> None:
    with db.begin() as conn:
        conn.execute(insert(_orders), [_order("c1"), _order("c2", "filled")])
        conn.execute(
            insert(_states), {"bot": "b1", "state": {"n": 3, "xs": [1.5]}, "updated_at": NOW}
        )
    query = select(_orders).where(_orders.c.bot == bindparam("bot")).order_by(_orders.c.id)
    with db.connect() as conn:
        core = [dict(r._mapping) for r in conn.execute(query, {"bot": "b1"})]
    state = Prepared(select(_states.c.state).where(_states.c.bot == bindparam("bot")))
    with prepared.reading(db) as session:
        rows = session.mappings(Prepared(query), {"bot": "b1"})
        assert session.scalar(state, {"bot": "b1"}) == {"n": 3, "xs": [1.5]}
        assert session.scalar(state, {"bot": "nobody"}) is None
        assert session.first(Prepared(query), {"bot": "nobody"}) is None
    assert rows == core
    assert rows[0]["created_at"] == NOW  # timezone-aware, microseconds kept
    # Literals inside the statement (the status filter) are bound by the statement itself.
    live = Prepared(query.where(_orders.c.status == "open"))
    with prepared.reading(db) as session:
        assert [r["client_order_id"] for r in session.mappings(live, {"bot": "b1"})] == ["c1"]


def test_insert_fills_constant_column_defaults(db: Any) -> None:
    given = [k for k in _order("c1") if k not in ("fee", "reason", "tag")]
    with prepared.transaction(db) as session:
        session.run(Prepared(insert(_orders), columns=given), _order("c1"))
    with db.connect() as conn:
        row = conn.execute(select(_orders.c.fee, _orders.c.reason, _orders.c.tag)).one()
    assert tuple(row) == (0.0, "", "")


def test_a_column_default_computed_per_row_must_be_given(db: Any) -> None:
    table = Table(
        "t",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("v", String, default=lambda: "x"),
    )
    with pytest.raises(ValueError, match="give v on every call"):
        Prepared(insert(table), columns=["id"]).compiled(db.dialect)


def test_insert_and_update_returning_and_rowcount(db: Any) -> None:
    add = Prepared(insert(_orders).returning(_orders.c.id), columns=list(_order("c1")))
    with prepared.transaction(db) as session:
        first = session.scalar(add, _order("c1"))
        assert session.scalar(add, _order("c2")) == first + 1
    fill = Prepared(
        update(_orders)
        .where(_orders.c.client_order_id == bindparam("cid"))
        .values(filled=_orders.c.filled + bindparam("add"), updated_at=bindparam("at"))
        .returning(_orders.c.filled, _orders.c.updated_at)
    )
    cancel = Prepared(update(_orders).where(_orders.c.bot == "b1").values(status="canceled"))
    with prepared.transaction(db) as session:
        row = session.first(fill, {"cid": "c1", "add": 0.25, "at": NOW})
        assert row == (0.25, NOW)
        assert (row.filled, row.updated_at) == (0.25, NOW)  # rows are named tuples
        assert session.first(fill, {"cid": "nope", "add": 1.0, "at": NOW}) is None
        assert session.run(cancel, {}) == 2


def test_driver_errors_are_sqlalchemys_and_roll_the_transaction_back(db: Any) -> None:
    add = Prepared(insert(_orders), columns=list(_order("c1")))
    with db.begin() as conn:
        conn.execute(insert(_orders), _order("c1"))

    def add_two() -> None:
        with prepared.transaction(db) as session:
            session.run(add, _order("c2"))
            session.run(add, _order("c1"))  # duplicate client order id

    with pytest.raises(IntegrityError):
        add_two()
    with db.connect() as conn:
        assert conn.execute(select(_orders.c.client_order_id)).scalars().all() == ["c1"]
    # The pooled connection is usable again.
    with prepared.transaction(db) as session:
        session.run(add, _order("c3"))
    with db.connect() as conn:
        assert sorted(conn.execute(select(_orders.c.client_order_id)).scalars()) == ["c1", "c3"]
