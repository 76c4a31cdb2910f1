"""Turning a run's records into figures: ticks, slots, duplicates, percentiles.

Two record sources, read the same way: the engine's `ticks` table (one row per slot
that ran, kept unique by a constraint) plus its worker logs (one `tick.started` per
run, so a slot run twice shows up there even though the table holds it once), and the
baseline's per-process record files.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from engine.models import Bot, Tick


@dataclass(frozen=True, slots=True)
class TickRow:
    """One slot that ran: who, which slot, and when (epoch seconds)."""

    bot: str
    generation: int
    slot: int
    due: float
    started: float
    finished: float
    outcome: str = "ok"

    @property
    def lateness_ms(self) -> float:
        """Start minus due."""
        return (self.started - self.due) * 1000

    @property
    def duration_ms(self) -> float:
        """Finish minus start."""
        return (self.finished - self.started) * 1000


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (p50, p95, ...) and the max, rounded to 0.1."""
    if not values:
        return {**{f"p{q:g}": math.nan for q in qs}, "max": math.nan}
    ordered = sorted(values)
    out = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        out[f"p{q:g}"] = round(ordered[rank - 1], 1)
    out["max"] = round(ordered[-1], 1)
    return out


def engine_ticks(db: Engine, prefix: str) -> list[TickRow]:
    """Every recorded tick of the bots named `<prefix>-...`."""
    query = select(
        Tick.bot,
        Tick.generation,
        Tick.slot,
        Tick.due_at,
        Tick.started_at,
        Tick.finished_at,
        Tick.outcome,
    ).where(Tick.bot.startswith(f"{prefix}-"))  # type: ignore[attr-defined]
    with db.connect() as conn:
        return [
            TickRow(
                bot,
                gen,
                slot,
                due.timestamp(),
                started.timestamp(),
                finished.timestamp(),
                str(outcome),
            )
            for bot, gen, slot, due, started, finished, outcome in conn.execute(query)
        ]


def engine_origins(db: Engine, prefix: str) -> dict[str, tuple[float, float]]:
    """bot -> (origin, interval) of its current generation (set at start, kept on stop)."""
    query = select(Bot.name, Bot.origin, Bot.interval_s).where(Bot.name.startswith(f"{prefix}-"))  # type: ignore[attr-defined]
    with db.connect() as conn:
        return {name: (origin, interval) for name, origin, interval in conn.execute(query)}


def started_counts(logs: Iterable[Path], prefix: str) -> Counter[tuple[str, int, int]]:
    """How often each (bot, generation, slot) logged `tick.started`, over all worker logs."""
    counts: Counter[tuple[str, int, int]] = Counter()
    marker, bot_prefix = '"tick.started"', f"{prefix}-"
    for path in logs:
        with path.open(errors="replace") as lines:
            for line in lines:
                if marker not in line:  # cheap filter before parsing JSON
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by SIGKILL
                bot = str(rec.get("bot", ""))
                if rec.get("event") == "tick.started" and bot.startswith(bot_prefix):
                    counts[(bot, int(rec["generation"]), int(rec["slot"]))] += 1
    return counts


def event_counts(logs: Iterable[Path], events: Sequence[str]) -> dict[str, int]:
    """How many lines of each event name the logs hold (e.g. `tick.duplicate`)."""
    counts = dict.fromkeys(events, 0)
    needles = {f'"event": "{e}"': e for e in events}
    for path in logs:
        with path.open(errors="replace") as lines:
            for line in lines:
                for needle, event in needles.items():
                    if needle in line:
                        counts[event] += 1
    return counts


def baseline_ticks(logdir: Path) -> tuple[list[TickRow], Counter[tuple[str, int, int]]]:
    """The baseline's runs (first run of each slot) and how often each slot ran."""
    counts: Counter[tuple[str, int, int]] = Counter()
    rows: dict[tuple[str, int, int], TickRow] = {}
    for path in sorted(logdir.glob("baseline-*.txt")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue
            bot, slot = parts[0], int(parts[1])
            due, started, finished = (float(p) for p in parts[2:])
            key = (bot, 0, slot)
            counts[key] += 1
            rows.setdefault(key, TickRow(bot, 0, slot, due, started, finished))
    return list(rows.values()), counts


def slots_due(origins: dict[str, tuple[float, float]], t0: float, t1: float) -> int:
    """How many slots of these bots fall due within [t0, t1]."""
    total = 0
    for origin, interval in origins.values():
        first = max(0, math.ceil((t0 - origin) / interval))
        last = math.floor((t1 - origin) / interval)
        total += max(0, last - first + 1)
    return total


@dataclass
class SlotFigures:
    """The schedule figures of one phase's measurement window."""

    slots_expected: int
    ticks_run: int
    skipped: int
    missed: int
    duplicates: int
    lateness_ms: dict[str, float]
    duration_ms: dict[str, float]
    ticks_per_s: float

    @property
    def run_pct(self) -> float:
        """Share of expected slots that ran, in percent."""
        return 100.0 * self.ticks_run / self.slots_expected if self.slots_expected else math.nan


def slot_figures(
    rows: Sequence[TickRow],
    counts: Counter[tuple[str, int, int]],
    origins: dict[str, tuple[float, float]],
    t0: float,
    t1: float,
) -> SlotFigures:
    """Figures over the slots due within [t0, t1] (the window after start-up)."""
    inside = [r for r in rows if t0 <= r.due <= t1]
    ran = [r for r in inside if r.outcome != "skipped"]
    expected = slots_due(origins, t0, t1)
    # Every extra run counts, inside the window or not: a duplicate is never harmless.
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    return SlotFigures(
        slots_expected=expected,
        ticks_run=len(ran),
        skipped=len(inside) - len(ran),
        missed=max(0, expected - len(inside)),
        duplicates=duplicates,
        lateness_ms=percentiles([r.lateness_ms for r in ran]),
        duration_ms=percentiles([r.duration_ms for r in ran], (50, 99)),
        ticks_per_s=round(len(ran) / (t1 - t0), 2) if t1 > t0 else math.nan,
    )


def throughput(rows: Sequence[TickRow], t0: float, t1: float) -> float:
    """Ticks started per second within [t0, t1]: capacity, when demand exceeds it."""
    n = sum(1 for r in rows if t0 <= r.started <= t1 and r.outcome != "skipped")
    return round(n / (t1 - t0), 1) if t1 > t0 else math.nan
