"""Orders, trades and balances of simulated accounts, and their Binance JSON shapes."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)


def fmt8(value: Decimal) -> str:
    """Binance prints quantities and prices with 8 decimals."""
    return f"{value:.8f}"


@dataclass(slots=True)
class Trade:
    """One fill of one order."""

    trade_id: int
    order_id: int
    symbol: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int
    is_buyer: bool
    is_maker: bool

    def fill_json(self) -> dict[str, Any]:
        """An element of ``fills`` in a FULL order response."""
        return {
            "price": fmt8(self.price),
            "qty": fmt8(self.qty),
            "commission": fmt8(self.commission),
            "commissionAsset": self.commission_asset,
            "tradeId": self.trade_id,
        }

    def my_trade_json(self) -> dict[str, Any]:
        """An element of ``GET /api/v3/myTrades``."""
        return {
            "symbol": self.symbol,
            "id": self.trade_id,
            "orderId": self.order_id,
            "orderListId": -1,
            "price": fmt8(self.price),
            "qty": fmt8(self.qty),
            "quoteQty": fmt8(self.quote_qty),
            "commission": fmt8(self.commission),
            "commissionAsset": self.commission_asset,
            "time": self.time_ms,
            "isBuyer": self.is_buyer,
            "isMaker": self.is_maker,
            "isBestMatch": True,
        }


@dataclass(slots=True)
class Order:
    """A spot order; ``reserved`` is what it still holds locked in the account."""

    order_id: int
    client_order_id: str
    account: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    price: Decimal
    orig_qty: Decimal
    orig_quote_qty: Decimal
    time_ms: int
    update_ms: int
    checked_s: int
    """Last second this resting order was matched against the price path."""
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    reserved: Decimal = ZERO
    trades: list[Trade] = field(default_factory=list)
    stop_price: Decimal = ZERO
    """STOP_LOSS_LIMIT / TAKE_PROFIT_LIMIT: the price that turns it into a limit order."""
    triggered: bool = False
    """A stop order whose stop price was reached: it now rests (or filled) at `price`."""

    @property
    def waiting(self) -> bool:
        """A stop order not triggered yet: it rests off the book, its funds locked."""
        return self.stop_price > 0 and not self.triggered

    @property
    def is_open(self) -> bool:
        """True while the order can still fill or be canceled."""
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def _common(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": fmt8(self.price),
            "origQty": fmt8(self.orig_qty),
            "executedQty": fmt8(self.executed_qty),
            "cummulativeQuoteQty": fmt8(self.cum_quote),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
        }

    def query_json(self) -> dict[str, Any]:
        """``GET /api/v3/order`` and ``openOrders`` element."""
        out = self._common()
        out.update(
            stopPrice=fmt8(self.stop_price),
            icebergQty="0.00000000",
            time=self.time_ms,
            updateTime=self.update_ms,
            isWorking=True,
            workingTime=self.time_ms,
            origQuoteOrderQty=fmt8(self.orig_quote_qty),
            selfTradePreventionMode="EXPIRE_MAKER",
        )
        return out

    def new_json(self, resp_type: str) -> dict[str, Any]:
        """``POST /api/v3/order`` answer for ``newOrderRespType`` ACK, RESULT or FULL."""
        if resp_type == "ACK":
            return {
                "symbol": self.symbol,
                "orderId": self.order_id,
                "orderListId": -1,
                "clientOrderId": self.client_order_id,
                "transactTime": self.time_ms,
            }
        out = self._common()
        out.update(
            transactTime=self.time_ms,
            origQuoteOrderQty=fmt8(self.orig_quote_qty),
            workingTime=self.time_ms,
            selfTradePreventionMode="EXPIRE_MAKER",
        )
        if resp_type == "FULL":
            out["fills"] = [t.fill_json() for t in self.trades]
        return out

    def cancel_json(self, cancel_client_id: str, now_ms: int) -> dict[str, Any]:
        """``DELETE /api/v3/order`` answer (``clientOrderId`` is the cancel's own id)."""
        out = self._common()
        out.update(
            origClientOrderId=self.client_order_id,
            clientOrderId=cancel_client_id,
            transactTime=now_ms,
            selfTradePreventionMode="EXPIRE_MAKER",
        )
        return out

    def log_json(self) -> dict[str, Any]:
        """The admin view (``GET /_sim/orders``): query shape plus account and fills."""
        out = self.query_json()
        out["account"] = self.account
        out["fills"] = [t.my_trade_json() for t in self.trades]
        return out


@dataclass(slots=True)
class Balance:
    """Free and locked amount of one asset."""

    free: Decimal = ZERO
    locked: Decimal = ZERO


@dataclass
class Account:
    """One API key's balances, orders and trades; lookups are O(1) dict hits."""

    api_key: str
    balances: dict[str, Balance] = field(default_factory=dict)
    by_client_id: dict[str, Order] = field(default_factory=dict)
    open_by_symbol: dict[str, dict[int, Order]] = field(default_factory=dict)
    trades_by_symbol: dict[str, list[Trade]] = field(default_factory=dict)
    swept_s: dict[str, int] = field(default_factory=dict)
    """Per symbol, the second up to which every open order has been matched."""

    def balance(self, asset: str) -> Balance:
        """The balance of ``asset``, created empty on first use."""
        found = self.balances.get(asset)
        if found is None:
            found = self.balances[asset] = Balance()
        return found

    def account_json(self, now_ms: int, omit_zero: bool, fee_rate: Decimal) -> dict[str, Any]:
        """``GET /api/v3/account``."""
        fee = fmt8(fee_rate)
        bps = int(fee_rate * 10_000)
        balances = [
            {"asset": asset, "free": fmt8(b.free), "locked": fmt8(b.locked)}
            for asset, b in sorted(self.balances.items())
            if not (omit_zero and b.free == 0 and b.locked == 0)
        ]
        return {
            "makerCommission": bps,
            "takerCommission": bps,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": fee,
                "taker": fee,
                "buyer": "0.00000000",
                "seller": "0.00000000",
            },
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": now_ms,
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
            "uid": zlib.crc32(self.api_key.encode()),
        }
