"""Historical candles from CSV: `timestamp,open,high,low,close,volume`, oldest first.

`timestamp` is the candle's open time, either epoch milliseconds (`1704067200000`) or
ISO 8601 (`2024-01-01T00:00:00Z`; no offset means UTC). Every problem is reported as a
`CandleFileError` naming the file and line, so a user can fix the file without a debugger.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from engine.domain import Candle

HEADER = ("timestamp", "open", "high", "low", "close", "volume")
# Epoch ms below this are before March 1973 - in practice always epoch *seconds* by mistake.
_MS_SANITY = 100_000_000_000


class CandleFileError(ValueError):
    """Raised when a candle file is missing, malformed or out of time order."""


def load_candles_csv(
    path: str | Path,
    start: int | str | datetime | None = None,
    end: int | str | datetime | None = None,
) -> list[Candle]:
    """Read and validate every candle, keeping those with `start <= ts < end`.

    `start` / `end` take epoch ms, ISO 8601 text or a datetime (naive means UTC). The
    whole file is validated, including rows outside the range.
    """
    path = Path(path)
    lo = _bound(start, "start")
    hi = _bound(end, "end")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return _parse(path, f, lo, hi)
    except OSError as exc:
        raise CandleFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CandleFileError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def parse_timestamp(text: str) -> int:
    """Epoch milliseconds from epoch-ms digits or ISO 8601 text; ValueError otherwise."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        if abs(value) < _MS_SANITY:
            raise ValueError(f"timestamp {value} looks like epoch seconds; expected milliseconds")
        return value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"timestamp {text!r} is neither epoch ms nor ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _parse(path: Path, lines: Iterable[str], lo: int | None, hi: int | None) -> list[Candle]:
    rows = csv.reader(lines)
    header = next(rows, None)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        raise CandleFileError(f"{path}:1: header must be exactly {','.join(HEADER)}")
    candles: list[Candle] = []
    previous: int | None = None
    for row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank lines (often a trailing one) carry nothing
        line = rows.line_num
        try:
            candle = _candle(row)
        except ValueError as exc:
            raise CandleFileError(f"{path}:{line}: {exc}") from None
        if previous is not None and candle.ts <= previous:
            raise CandleFileError(
                f"{path}:{line}: timestamp {candle.ts} is not after the previous row's "
                f"{previous}: rows must be in increasing time order"
            )
        previous = candle.ts
        if (lo is None or candle.ts >= lo) and (hi is None or candle.ts < hi):
            candles.append(candle)
    return candles


def _candle(row: list[str]) -> Candle:
    if len(row) != len(HEADER):
        raise ValueError(f"expected {len(HEADER)} fields, got {len(row)}")
    ts = parse_timestamp(row[0])
    # Fast path for the common, valid row (a year of minutes is half a million rows);
    # NaN fails every comparison, so it lands in the detailed checks below too.
    try:
        o, h, low, c, v = map(float, row[1:])
    except ValueError:
        o = h = low = c = v = math.nan
    if 0 < low <= min(o, c) and max(o, c) <= h < math.inf and 0 <= v < math.inf:
        return Candle(ts=ts, open=o, high=h, low=low, close=c, volume=v)
    o, h, low, c, v = (_number(name, text) for name, text in zip(HEADER[1:], row[1:], strict=True))
    if min(o, h, low, c) <= 0:
        raise ValueError("prices must be positive")
    if v < 0:
        raise ValueError("volume must not be negative")
    raise ValueError(f"inconsistent OHLC: need low <= open, close <= high, got {row[1:5]}")


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {text.strip()!r}")
    return value


def _bound(value: int | str | datetime | None, name: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise CandleFileError(f"{name}: {exc}") from None
