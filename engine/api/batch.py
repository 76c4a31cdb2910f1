"""`/api/v1/batch/{action}`: start, stop, pause or resume many bots in one request.

The bots are named, selected by label, or all; each gets its own lifecycle call (as
`POST /bots/{name}/{action}` would make), and the answer lists every outcome.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from engine import bulk
from engine.api.deps import RtDep
from engine.config import BOT_NAME, LABEL

router = APIRouter(prefix="/batch", tags=["batch"])


class Selection(BaseModel):
    """Which bots: `bots` by name, those carrying any of `labels`, or `all`."""

    model_config = ConfigDict(extra="forbid")

    bots: list[Annotated[str, StringConstraints(pattern=BOT_NAME)]] = Field(
        default_factory=list, max_length=10_000
    )
    labels: list[Annotated[str, StringConstraints(pattern=LABEL)]] = Field(
        default_factory=list, max_length=16
    )
    all: bool = False

    @model_validator(mode="after")
    def _something(self) -> Selection:
        if not (self.bots or self.labels or self.all):
            raise ValueError("select bots: give bots, labels or all: true")
        if self.all and (self.bots or self.labels):
            raise ValueError("give all: true alone, or bots and labels")
        return self


@router.post("/{action}", summary="Start, stop, pause or resume many bots")
def batch(
    action: Literal["start", "stop", "pause", "resume"],
    selection: Annotated[Selection, Body()],
    rt: RtDep,
) -> dict[str, Any]:
    """`{"results": [{"bot", "change", "generation", "error", "drained"}], "counts"}`.
    An unknown name is a 404 and nothing is done; a bot whose own call fails (run by a
    foreground process, say) has its `error`, and the others go on."""
    names = bulk.select_bots(
        rt.db, names=selection.bots, labels=selection.labels, every=selection.all
    )
    outcomes = bulk.apply(rt, action, names)
    return {
        "results": [
            {
                "bot": o.bot,
                "change": o.change,
                "generation": o.generation,
                "error": o.error,
                "drained": o.drained,
            }
            for o in outcomes
        ],
        "counts": dict(Counter(o.change if o.ok else "failed" for o in outcomes)),
    }
