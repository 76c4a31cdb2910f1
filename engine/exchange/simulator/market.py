"""Market data of one symbol, derived from its price path: quotes, depth, candles.

Everything here is a pure function of (config, second), which is what lets the
server cache public responses per second and lets tests predict the answers.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from .config import SymbolSpec
from .errors import invalid_interval
from .prices import DAY_S, Bar, PricePath
from .replay import ReplayPath

INTERVALS: dict[str, int] = {
    "1s": 1,
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": DAY_S,
    "3d": 3 * DAY_S,
    "1w": 7 * DAY_S,
}
"""Binance kline intervals the simulator serves (``1M`` is not: months are uneven)."""

_WEEK_OFFSET_S = 4 * DAY_S  # Binance weeks open on Monday; 1970-01-01 was a Thursday


def _decimals(step: str) -> int:
    return len(step.rstrip("0").partition(".")[2])


class Market:
    """One listed symbol: its filters, its price path and the quotes derived from it."""

    def __init__(
        self, spec: SymbolSpec, seed: int, spread_bps: float, replay: ReplayPath | None = None
    ) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.replay = replay is not None
        self.path: PricePath | ReplayPath = replay or PricePath(
            seed, spec.symbol, spec.price, spec.daily_volatility, spec.base_volume
        )
        self.tick = spec.tick
        self.tick_f = float(spec.tick)
        self.price_decimals = _decimals(spec.tick_size)
        self.half_spread = spread_bps / 20_000.0

    # -- quotes ----------------------------------------------------------------------

    def _bid_ticks(self, mid: float) -> int:
        return math.floor(mid * (1.0 - self.half_spread) / self.tick_f)

    def _ask_ticks(self, mid: float) -> int:
        return math.ceil(mid * (1.0 + self.half_spread) / self.tick_f)

    def quote_ticks(self, now_s: int) -> tuple[int, int]:
        """Best bid and ask at second ``now_s``, in ticks (ask always above bid)."""
        mid = self.path.mid(now_s)
        if self.replay:  # the recorded price itself, as the backtest sees it
            ticks = round(mid / self.tick_f)
            return ticks, ticks
        bid, ask = self._bid_ticks(mid), self._ask_ticks(mid)
        return bid, max(ask, bid + 1)

    def quote(self, now_s: int) -> tuple[Decimal, Decimal]:
        """Best bid and ask at second ``now_s`` as exact prices."""
        bid, ask = self.quote_ticks(now_s)
        return self.tick * bid, self.tick * ask

    def extremes(self, start_s: int, end_s: int) -> tuple[Decimal, Decimal]:
        """(lowest ask, highest bid) over seconds ``[start_s, end_s)``.

        What a resting order would have met: a buy limit at or above the lowest ask
        was crossed, as was a sell limit at or below the highest bid.
        """
        bar = self.path.bar(start_s, end_s)
        assert bar is not None
        if self.replay:
            return self.tick * round(bar.low / self.tick_f), self.tick * round(
                bar.high / self.tick_f
            )
        low_ask = max(self._ask_ticks(bar.low), self._bid_ticks(bar.low) + 1)
        return self.tick * low_ask, self.tick * self._bid_ticks(bar.high)

    def reach(self, start_s: int, end_s: int) -> tuple[Decimal, Decimal]:
        """(lowest bid, highest ask) over seconds ``[start_s, end_s)``: how far the
        market went against a resting order's side (what triggers stop orders)."""
        bar = self.path.bar(start_s, end_s)
        assert bar is not None
        if self.replay:
            return self.tick * round(bar.low / self.tick_f), self.tick * round(
                bar.high / self.tick_f
            )
        low_bid = self._bid_ticks(bar.low)
        return self.tick * low_bid, self.tick * max(self._ask_ticks(bar.high), low_bid + 1)

    def fmt(self, price: float) -> str:
        """A price rounded to the tick, as Binance prints it."""
        return f"{round(price / self.tick_f) * self.tick_f:.{self.price_decimals}f}"

    def fmt_ticks(self, ticks: int) -> str:
        """A price given in ticks, as Binance prints it."""
        return f"{ticks * self.tick_f:.{self.price_decimals}f}"

    # -- REST payloads ---------------------------------------------------------------

    def _top_qty(self, now_s: int, level: int) -> str:
        # deterministic, varied and cheap: no RNG needed for display quantities
        spread = ((now_s * 31 + level * 7919) % 97) / 50.0
        return f"{self.spec.base_volume * (0.05 + spread):.8f}"

    def book_ticker(self, now_s: int) -> dict[str, Any]:
        """``GET /api/v3/ticker/bookTicker`` for one symbol."""
        bid, ask = self.quote_ticks(now_s)
        return {
            "symbol": self.symbol,
            "bidPrice": self.fmt_ticks(bid),
            "bidQty": self._top_qty(now_s, 0),
            "askPrice": self.fmt_ticks(ask),
            "askQty": self._top_qty(now_s, 1),
        }

    def ticker_24hr(self, now_s: int) -> dict[str, Any]:
        """``GET /api/v3/ticker/24hr`` for one symbol (rolling 24 h ending now)."""
        bar = self.path.bar(now_s - DAY_S + 1, now_s + 1)
        assert bar is not None
        bid, ask = self.quote_ticks(now_s)
        last = self.path.mid(now_s)
        change = last - bar.open
        vwap = (bar.open + bar.high + bar.low + last) / 4.0
        count = int(bar.volume * 3) + 1
        return {
            "symbol": self.symbol,
            "priceChange": self.fmt(change),
            "priceChangePercent": f"{change / bar.open * 100.0:.3f}",
            "weightedAvgPrice": self.fmt(vwap),
            "prevClosePrice": self.fmt(bar.open),
            "lastPrice": self.fmt(last),
            "lastQty": self._top_qty(now_s, 2),
            "bidPrice": self.fmt_ticks(bid),
            "bidQty": self._top_qty(now_s, 0),
            "askPrice": self.fmt_ticks(ask),
            "askQty": self._top_qty(now_s, 1),
            "openPrice": self.fmt(bar.open),
            "highPrice": self.fmt(bar.high),
            "lowPrice": self.fmt(bar.low),
            "volume": f"{bar.volume:.8f}",
            "quoteVolume": f"{bar.volume * vwap:.8f}",
            "openTime": (now_s - DAY_S + 1) * 1000,
            "closeTime": now_s * 1000 + 999,
            "firstId": 1,
            "lastId": count,
            "count": count,
        }

    def price_ticker(self, now_s: int) -> dict[str, Any]:
        """``GET /api/v3/ticker/price`` for one symbol."""
        return {"symbol": self.symbol, "price": self.fmt(self.path.mid(now_s))}

    def depth(self, now_s: int, limit: int) -> dict[str, Any]:
        """``GET /api/v3/depth``: a synthetic book, levels about 1 bp apart."""
        bid, ask = self.quote_ticks(now_s)
        gap = max(1, round(self.path.mid(now_s) * 0.0001 / self.tick_f))
        return {
            "lastUpdateId": now_s,
            "bids": [
                [self.fmt_ticks(bid - i * gap), self._top_qty(now_s, i)] for i in range(limit)
            ],
            "asks": [
                [self.fmt_ticks(ask + i * gap), self._top_qty(now_s, i + limit)]
                for i in range(limit)
            ],
        }

    def klines(
        self,
        interval: str,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        now_s: int,
    ) -> list[list[Any]]:
        """``GET /api/v3/klines``: candles by open time, the last one possibly still open.

        As on Binance: with ``startTime`` the first candle opens at or after it, with
        ``endTime`` the last opens at or before it, without both the newest ``limit``.
        """
        tf = INTERVALS.get(interval)
        if tf is None:
            raise invalid_interval()
        offset = _WEEK_OFFSET_S if tf == 7 * DAY_S else 0

        def floor_open(t_s: int) -> int:
            return t_s - (t_s - offset) % tf

        current = floor_open(now_s)
        last = current if end_ms is None else min(current, floor_open(end_ms // 1000))
        if start_ms is not None:
            first = floor_open(-(-start_ms // 1000))
            if first * 1000 < start_ms:
                first += tf
            last = min(last, first + (limit - 1) * tf)
        else:
            first = last - (limit - 1) * tf
        first = max(first, floor_open(0) + tf)
        rows: list[list[Any]] = []
        t = first
        while t <= last:
            cacheable = getattr(self.path, "cacheable", True)
            if cacheable and tf % 60 == 0 and DAY_S % tf == 0 and t + tf <= now_s:
                # closed candles of whole days come from the per-day cache, in one slice
                day = t // DAY_S
                day_end = min((day + 1) * DAY_S, last + tf, current)
                i, j = (t - day * DAY_S) // tf, (day_end - day * DAY_S) // tf
                if j > i:
                    for k, row in enumerate(self.path.day_candles(day, tf)[i:j].tolist()):
                        rows.append(self._kline(t + k * tf, tf, Bar(*row)))
                    t += (j - i) * tf
                    continue
            bar = self.path.bar(t, min(t + tf, now_s + 1))
            if bar is None:
                break
            rows.append(self._kline(t, tf, bar))
            t += tf
        return rows

    def _kline(self, open_s: int, tf: int, bar: Bar) -> list[Any]:
        quote_volume = bar.volume * (bar.open + bar.close) / 2.0
        return [
            open_s * 1000,
            self.fmt(bar.open),
            self.fmt(bar.high),
            self.fmt(bar.low),
            self.fmt(bar.close),
            f"{bar.volume:.8f}",
            (open_s + tf) * 1000 - 1,
            f"{quote_volume:.8f}",
            int(bar.volume * 3) + 1,
            f"{bar.volume / 2.0:.8f}",
            f"{quote_volume / 2.0:.8f}",
            "0",
        ]

    def exchange_info(self) -> dict[str, Any]:
        """This symbol's entry in ``GET /api/v3/exchangeInfo``."""
        s = self.spec
        return {
            "symbol": s.symbol,
            "status": "TRADING",
            "baseAsset": s.base,
            "baseAssetPrecision": 8,
            "quoteAsset": s.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": False,
            "ocoAllowed": False,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": s.tick_size,
                    "maxPrice": "10000000.00000000",
                    "tickSize": s.tick_size,
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": s.min_qty,
                    "maxQty": s.max_qty,
                    "stepSize": s.step_size,
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": s.min_notional,
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER"],
        }
