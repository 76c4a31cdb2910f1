"""Sending tasks from the API: queued through the broker, or inline when it is down.

A task endpoint must answer even when the broker cannot be reached (that is often
exactly when an operator pokes at it), so the dispatcher probes the broker first —
a Redis PING with a short timeout, remembered for a moment so a burst of requests
costs one probe — and runs the task in the API process when it is down, saying so
(`"mode": "inline"`) instead of failing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from celery import Celery, signals, states
from fastapi.encoders import jsonable_encoder
from redis.exceptions import RedisError

from engine.api.errors import ApiError
from engine.embedded import reachable
from engine.logging import get_logger

log = get_logger("engine.api")

TaskView = dict[str, Any]
STATES = (states.PENDING, states.STARTED, states.SUCCESS, states.FAILURE, states.RETRY)


class BrokerProbe:
    """Is the broker reachable? One PING per `ttl_s`, each bounded by `timeout_s`."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 1.5,
        timeout_s: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._up = False

    def up(self) -> bool:
        """True when the broker answered within the last `ttl_s` (probing if stale)."""
        with self._lock:  # one probe at a time; the others reuse its answer
            now = self.clock()
            if self._checked_at is None or now - self._checked_at >= self.ttl_s:
                self._up = self._probe()
                self._checked_at = self.clock()
            return self._up

    def forget(self) -> None:
        """Probe again on the next call (after a send failed although the probe said up)."""
        with self._lock:
            self._checked_at = None

    def _probe(self) -> bool:
        if self.url.split("://", 1)[0] in ("redis", "rediss", "unix"):
            return reachable(self.url, self.timeout_s)
        return True  # other transports: let the send itself tell


def _error_text(exc: object) -> str:
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def view(
    task_id: str, state: str, result: Any, retries: int = 0, mode: str | None = None
) -> TaskView:
    """The answer of every task endpoint: id, Celery state, result or error, retries."""
    out: TaskView = {
        "task_id": task_id,
        "state": state,
        "result": None,
        "error": None,
        "retries": retries,
    }
    if state == states.SUCCESS:
        out["result"] = jsonable_encoder(result)
    elif state in (states.FAILURE, states.RETRY) and result is not None:
        out["error"] = _error_text(result)
    if mode is not None:
        out["mode"] = mode
    return out


class _InlineResults:
    """Results of tasks run inline, so `GET /tasks/{id}` can answer for them too
    (they never reached the result backend). Bounded; oldest forgotten first."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._items: OrderedDict[str, TaskView] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: TaskView) -> None:
        with self._lock:
            self._items[item["task_id"]] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, task_id: str) -> TaskView | None:
        with self._lock:
            return self._items.get(task_id)


class Dispatcher:
    """Sends named tasks (`send_task`, so the API needs no task imports) or runs them."""

    def __init__(self, celery: Celery, probe: BrokerProbe) -> None:
        self.celery = celery
        self.probe = probe
        self.inline = _InlineResults()

    def submit(self, name: str, kwargs: dict[str, Any] | None = None) -> TaskView:
        """Queue task `name`; run it inline when the broker is down."""
        kwargs = kwargs or {}
        if self.probe.up():
            try:
                sent = self.celery.send_task(name, kwargs=kwargs, retry=False)
            except Exception as exc:  # noqa: BLE001 - any send failure: fall back to inline
                log.warning("api.task_send_failed", task_name=name, error=_error_text(exc))
                self.probe.forget()
            else:
                return {"success": True, **view(sent.id, states.PENDING, None, mode="queued")}
        item = self.run_inline(name, kwargs)
        return {"success": item["state"] != states.FAILURE, **item}

    def run_inline(self, name: str, kwargs: dict[str, Any]) -> TaskView:
        """Run task `name` in this process (`Task.apply`), recording its result."""
        import engine.tasks  # noqa: F401 - registers the engine's tasks with the app

        task = self.celery.tasks.get(name)
        if task is None:
            raise ApiError(
                503, "task_unavailable", f"the broker is unreachable and {name} cannot run inline"
            )
        task_id = str(uuid.uuid4())
        log.info("api.task_inline", task_name=name, task_id=task_id)
        retries = _RetryCount(task_id)
        signals.task_retry.connect(retries, weak=False)
        try:
            # Eager: Celery's own retries run at once, one after the other, in this call.
            result = task.apply(kwargs=kwargs, task_id=task_id)
        finally:
            signals.task_retry.disconnect(retries)
        item = view(task_id, result.state, result.result, retries.count, mode="inline")
        self.inline.put({k: v for k, v in item.items() if k != "mode"})
        return item

    def status(self, task_id: str) -> TaskView:
        """The task's state from the result backend (or from the inline record)."""
        if (item := self.inline.get(task_id)) is not None:
            return item
        try:
            meta = self.celery.backend.get_task_meta(task_id)
        except (RedisError, OSError) as exc:
            raise ApiError(
                503,
                "backend_unavailable",
                f"the result backend is unreachable ({_error_text(exc)}); tasks run now "
                "run inline and can still be read",
            ) from exc
        # `retries` is stored with `result_extended` (engine.celery_app).
        return view(task_id, str(meta["status"]), meta.get("result"), int(meta.get("retries") or 0))


class _RetryCount:
    """Counts Celery's `task_retry` signals of one inline task."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.count = 0

    def __call__(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is not None and getattr(request, "id", None) == self.task_id:
            self.count += 1
