"""The baseline: a bare Celery chain on the same broker, to put the engine's cost in ratio.

`celery -A benchmarks.baseline_app worker -Q baseline` runs it. Each "bot" is a noop
task that re-enqueues itself with a countdown to its next drift-free due time
(`origin + slot * interval`, the engine's own slot arithmetic and catch-up rule), with
a deterministic task id and an expiry like the engine's ticks. No lock, no claim, no
database, no exchange: what is left is Celery, the broker and the ETA timer.

Each run appends `bot slot due started finished` to a file per worker process in
`BASELINE_LOG_DIR` (one O_APPEND write, like one log line), which the harness reads.
"""

from __future__ import annotations

import os
import threading
import time

from celery import Celery

from engine.outbox import expires_in
from engine.schedule import successor

QUEUE = "baseline"

app = Celery("baseline", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
# The engine's worker settings that shape a tick's path through Celery (engine/celery_app.py).
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)

_fd: dict[int, int] = {}
_fd_lock = threading.Lock()


def _record(line: str) -> None:
    pid = os.getpid()  # a prefork child opens its own file, after the fork
    with _fd_lock:
        if pid not in _fd:
            path = os.path.join(os.environ["BASELINE_LOG_DIR"], f"baseline-{pid}.txt")
            _fd[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd[pid], line.encode())


def enqueue(bot: str, slot: int, origin: float, interval: float, end: float) -> None:
    """Send one chain link, timed like `engine.runtime.celery_enqueue` sends a tick."""
    due = origin + slot * interval
    now = time.time()
    tick.apply_async(
        args=(bot, slot, origin, interval, end),
        task_id=f"baseline:{bot}:{slot}",
        countdown=max(0.0, due - now),
        expires=expires_in(due, now),
    )


@app.task(name="baseline.tick")
def tick(bot: str, slot: int, origin: float, interval: float, end: float) -> None:
    """Record start-minus-due, then enqueue the next slot unless it is due after `end`."""
    started = time.time()
    due = origin + slot * interval
    finished = time.time()
    _record(f"{bot} {slot} {due:.6f} {started:.6f} {finished:.6f}\n")
    nxt, _ = successor(origin, interval, slot, finished)
    if origin + nxt * interval <= end:
        enqueue(bot, nxt, origin, interval, end)
