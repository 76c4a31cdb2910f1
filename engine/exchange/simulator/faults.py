"""Fault injection: latency, 5xx, 429, 418, timeouts and lost order responses.

Rules are plain data so they travel as JSON (``POST /_sim/faults``) as easily as they
are set in-process. A rule fires on the *next N* matching requests (``count``, fully
deterministic) or with a probability (``rate``, drawn from an RNG seeded by the
config, so a run replays identically for the same request sequence). At most one
error rule fires per request, the first in list order; latency rules all add up.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

KINDS = ("http_5xx", "http_429", "http_418", "timeout", "response_lost", "latency")
"""
* ``http_5xx``: answer ``status`` (default 503) without executing the request.
* ``http_429`` / ``http_418``: Binance rate-limit / IP-ban answer with ``Retry-After``;
  a ``sticky`` 418 bans like Binance does: every request gets 418 until it expires.
* ``timeout``: hold the request ``hold_s`` seconds, then answer 504 without executing.
* ``response_lost``: execute the request (the order IS created and matched), then
  ``mode="drop"`` resets the connection, ``mode="delay"`` answers after ``hold_s``.
* ``latency``: add ``ms`` plus uniform ``[0, jitter_ms]`` before answering.
"""


@dataclass
class FaultRule:
    """One fault, scoped by URL path glob and HTTP method."""

    kind: str
    count: int | None = None
    """Fire on the next ``count`` matching requests, then never again."""
    rate: float | None = None
    """Fire with this probability (used when ``count`` is None; both None = always)."""
    path: str = "*"
    """``fnmatch`` pattern on the URL path, e.g. ``/api/v3/order`` or ``/api/v3/*``."""
    method: str = "*"
    """``GET``, ``POST``, ``DELETE`` or ``*``."""
    status: int = 503
    retry_after_s: int = 1
    hold_s: float = 5.0
    mode: str = "drop"
    sticky: bool = False
    """``http_418`` only: once fired, answer every request 418 for ``retry_after_s``."""
    ms: float = 0.0
    jitter_ms: float = 0.0
    fired: int = 0
    """How many times this rule has fired (reported, not configured)."""

    def __post_init__(self) -> None:
        # coerce here: a rule arriving as JSON with "3" for 3 must fail now, with a 400,
        # not later inside every request it is matched against
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")
        if self.mode not in ("drop", "delay"):
            raise ValueError("mode must be 'drop' or 'delay'")
        if self.count is not None:
            self.count = int(self.count)
        if self.rate is not None:
            self.rate = float(self.rate)
            if not 0.0 <= self.rate <= 1.0:
                raise ValueError("rate must be between 0 and 1")
        self.path, self.method = str(self.path), str(self.method).upper()
        self.status, self.retry_after_s = int(self.status), int(self.retry_after_s)
        self.sticky = bool(self.sticky)
        self.hold_s, self.ms, self.jitter_ms = (
            float(self.hold_s),
            float(self.ms),
            float(self.jitter_ms),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from its JSON form, rejecting unknown keys (typos fail loudly)."""
        known = {f.name for f in fields(cls)} - {"fired"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault rule needs a 'kind'")
        return cls(**dict(data))

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request, ignoring count and rate."""
        return (self.method in ("*", method)) and (self.path == "*" or fnmatchcase(path, self.path))

    def exhausted(self) -> bool:
        """True once a counted rule has fired ``count`` times."""
        return self.count is not None and self.fired >= self.count


class Decision(NamedTuple):
    """What to do with one request: wait ``delay_s``, then apply ``fault`` (if any)."""

    delay_s: float
    fault: FaultRule | None


NO_FAULT = Decision(0.0, None)


class FaultInjector:
    """The current fault rules and the seeded RNG that drives rates and jitter."""

    def __init__(self, seed: int = 0, latency_ms: float = 0.0, jitter_ms: float = 0.0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.rules: list[FaultRule] = []
        self.ban: FaultRule | None = None
        self.banned_until = 0.0  # time.monotonic() at which a sticky 418 ban ends

    def ban_remaining_s(self) -> int:
        """Whole seconds left of a sticky 418 ban (0 when not banned)."""
        return max(0, math.ceil(self.banned_until - time.monotonic()))

    def add(self, rule: FaultRule) -> FaultRule:
        """Append a rule and return it (its ``fired`` counter updates live)."""
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and all latency."""
        self.rules.clear()
        self.latency_ms = self.jitter_ms = 0.0
        self.ban, self.banned_until = None, 0.0

    def configure(self, spec: Mapping[str, Any]) -> None:
        """Apply the JSON of ``POST /_sim/faults``; validates everything before changing.

        Keys: ``clear`` (bool), ``seed`` (int), ``latency_ms``, ``jitter_ms`` (numbers),
        ``rules`` (list of rule objects), ``append`` (bool: add to, not replace, rules).
        """
        allowed = {"clear", "seed", "latency_ms", "jitter_ms", "rules", "append"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        raw_rules = spec.get("rules", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise ValueError("rules must be a list of objects")
        rules = [FaultRule.from_json(r) for r in raw_rules]
        latency = float(spec.get("latency_ms", self.latency_ms))
        jitter = float(spec.get("jitter_ms", self.jitter_ms))
        if spec.get("clear"):
            self.clear()
            latency = float(spec.get("latency_ms", 0.0))
            jitter = float(spec.get("jitter_ms", 0.0))
        if "seed" in spec:
            self.seed = int(spec["seed"])
            self.rng = random.Random(self.seed)
        self.latency_ms, self.jitter_ms = latency, jitter
        if "rules" in spec:
            if not spec.get("append"):
                self.rules.clear()
            self.rules.extend(rules)

    def decide(self, method: str, path: str) -> Decision:
        """Pick the delay and the fault for one request (cheap when nothing is set)."""
        if not self.rules and not self.latency_ms and not self.jitter_ms:
            return NO_FAULT
        delay_ms = self.latency_ms
        if self.jitter_ms:
            delay_ms += self.rng.uniform(0.0, self.jitter_ms)
        chosen: FaultRule | None = None
        if self.ban is not None and time.monotonic() < self.banned_until:
            chosen = self.ban
        for rule in self.rules:
            if rule.exhausted() or not rule.matches(method, path):
                continue
            if rule.kind == "latency":
                if self._fires(rule):
                    delay_ms += rule.ms + (rule.jitter_ms and self.rng.uniform(0, rule.jitter_ms))
            elif chosen is None and self._fires(rule):
                chosen = rule
                if rule.kind == "http_418" and rule.sticky:
                    self.ban, self.banned_until = rule, time.monotonic() + rule.retry_after_s
        return Decision(delay_ms / 1000.0, chosen)

    def _fires(self, rule: FaultRule) -> bool:
        if rule.count is None and rule.rate is not None and self.rng.random() >= rule.rate:
            return False
        rule.fired += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        """The JSON of ``GET /_sim/faults``."""
        return {
            "seed": self.seed,
            "banned_for_s": self.ban_remaining_s(),
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "rules": [
                {**asdict(r), "remaining": None if r.count is None else r.count - r.fired}
                for r in self.rules
            ],
        }
