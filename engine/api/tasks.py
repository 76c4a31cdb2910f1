"""`/api/v1/tasks`: send maintenance tasks and follow their state.

Tasks are sent by name (`send_task`), so the API does not import what they import;
when the broker is down they run inline in the API process (see engine.api.dispatch).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session

from engine.api.deps import DispatcherDep, RtDep
from engine.config import BOT_NAME
from engine.errors import BotNotFoundError
from engine.models import Bot

router = APIRouter(prefix="/tasks", tags=["tasks"])

PING = "engine.ping"
PRICE_CHECK = "engine.price_check"
TaskId = Annotated[str, Path(pattern=r"^[A-Za-z0-9:._-]{1,200}$", description="A task id")]


class PriceCheckRequest(BaseModel):
    """What to check: one symbol on one exchange, or one bot's symbol; none means
    every symbol tracked by a running bot."""

    model_config = ConfigDict(extra="forbid")

    symbol: str | None = Field(None, pattern=r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$")
    exchange: str | None = Field(None, min_length=1, max_length=64)
    bot: str | None = Field(None, pattern=BOT_NAME)

    @model_validator(mode="after")
    def _one_target(self) -> PriceCheckRequest:
        if self.bot is not None and (self.symbol is not None or self.exchange is not None):
            raise ValueError("give either bot, or symbol and exchange, not both")
        return self


def _answer(response: Response, task: dict[str, Any]) -> dict[str, Any]:
    # `success`: accepted (queued), or run inline without failing.
    # Queued: accepted, not done (202). Inline: done, result included (200).
    response.status_code = 202 if task.get("mode") == "queued" else 200
    return task


@router.post("/ping", summary="Ask a worker for its name and time", status_code=202)
def ping(dispatcher: DispatcherDep, response: Response) -> dict[str, Any]:
    """`{"success", "task_id", "state", "result", "error", "retries", "mode": "queued" |
    "inline"}`."""
    return _answer(response, dispatcher.submit(PING))


@router.post("/price-check", summary="Fetch and record current prices now", status_code=202)
def price_check(
    dispatcher: DispatcherDep,
    rt: RtDep,
    response: Response,
    request: Annotated[PriceCheckRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Body optional: `{"symbol": "BTC/USDT", "exchange": "simulator"}` or `{"bot": "x"}`."""
    kwargs = request.model_dump(exclude_none=True) if request is not None else {}
    if "bot" in kwargs:
        with Session(rt.db) as session:
            if session.get(Bot, kwargs["bot"]) is None:
                raise BotNotFoundError(f"no bot named {kwargs['bot']!r}")
    return _answer(response, dispatcher.submit(PRICE_CHECK, kwargs))


@router.get("/{task_id}", summary="A task's state: PENDING, STARTED, SUCCESS, FAILURE, RETRY")
def task_state(task_id: TaskId, dispatcher: DispatcherDep) -> dict[str, Any]:
    """`{"task_id", "state", "result", "error", "retries"}`. Unknown ids read as PENDING
    (Celery cannot tell them from queued ones)."""
    return dispatcher.status(task_id)


@router.get("/{task_id}/status", summary="A task's status, as the original task API had it")
def task_status(task_id: TaskId, dispatcher: DispatcherDep) -> dict[str, Any]:
    """`{"task_id", "status": "PENDING|STARTED|SUCCESS|FAILURE|RETRY", "result", "error",
    "retries"}`: the same answer as `GET /tasks/{id}` under the original names."""
    item = dispatcher.status(task_id)
    return {
        "task_id": item["task_id"],
        "status": item["state"],
        "result": item["result"],
        "error": item["error"],
        "retries": item["retries"],
    }
