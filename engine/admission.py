"""How many ticks of one worker process run at once, however many threads it has.

A thread pool lets a process wait on many exchanges at a time, but beyond two or three
ticks running Python at once a process gets slower, not faster: the threads take turns
on the GIL, and the tick that holds SQLite's one write lock waits behind the others for
every turn while every writer of every process waits for it. Measured at saturation
(2 processes, 2,000 bots at 1 s): 507 ticks/s with 2 threads each, 455 with 4, 355
with 8 (benchmarks/README.md). So a tick runs only while it holds one of `limit`
turns, and gives its turn back while it waits on something slow outside the process
(an exchange request, a rate-limit pause): 32 threads then wait on exchanges together
while at most `limit` of them compute. With turns, 8 or 32 threads ran 377 ticks/s
(356 and 329 without), not 507: Celery's own per-task work still runs in every thread.

Rule for callers of `waiting`: hold nothing another tick could need (a database
transaction, a client lock) while the block ends, because it ends by waiting for a
turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()
_turns: threading.Semaphore | None = None


def configure(limit: int) -> None:
    """Allow `limit` ticks of this process to run at once (0: no limit)."""
    global _turns  # one set of turns per process is the point
    _turns = threading.Semaphore(limit) if limit > 0 else None


@contextmanager
def turn() -> Iterator[None]:
    """Run the block as one of the process's `limit` running ticks."""
    turns = _turns
    if turns is None or getattr(_local, "turns", None) is not None:
        yield  # no limit, or a nested call: the outer block holds the turn
        return
    turns.acquire()
    _local.turns = turns
    try:
        yield
    finally:
        _local.turns = None
        turns.release()


@contextmanager
def waiting() -> Iterator[None]:
    """Give this thread's turn to another tick for the block (a slow wait outside the
    process), and take one again after it. Outside a tick, or nested, it does nothing."""
    turns = getattr(_local, "turns", None)
    if turns is None:
        yield
        return
    _local.turns = None
    turns.release()
    try:
        yield
    finally:
        turns.acquire()
        _local.turns = turns
