"""The exception hierarchy, grouped by what the caller must do about each error."""

from __future__ import annotations


class BotEngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(BotEngineError):
    """Raised when settings or a bot config are invalid; fix the input, nothing was changed."""


class BotConfigError(ConfigError):
    """Raised when a bot config file fails validation; carries every problem found in it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BotNotFoundError(BotEngineError):
    """Raised when a command names a bot the database does not know."""


class BrokerUnavailableError(BotEngineError):
    """Raised when the Celery broker or the coordination Redis cannot be reached."""


class BotBusyError(BotEngineError):
    """Raised when a bot runs elsewhere (the fleet, or a foreground `botengine run`); stop
    it there first, or take it over explicitly."""


class DatabaseUnavailableError(BotEngineError):
    """Raised when the database cannot be reached; retry later, nothing was changed."""


class FencedError(BotEngineError):
    """Raised inside a tick when its generation is no longer current: stop sending orders."""


class SupersededError(FencedError):
    """Raised inside a tick when the database no longer runs its generation: the tick and
    its chain end here, and Redis is told what the database holds."""

    def __init__(
        self, message: str, status: str | None, generation: int | None, runner: str | None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.generation = generation
        self.runner = runner


class ExchangeError(BotEngineError):
    """Base class of errors coming from an exchange (or the paper broker)."""


class TemporaryError(ExchangeError):
    """Raised when an exchange call failed transiently (network, timeout, 5xx); retry later."""


class RateLimitedError(TemporaryError):
    """Raised when the exchange answered 429; wait `retry_after` seconds before the next call."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExchangeBannedError(TemporaryError):
    """Raised when the exchange banned this IP (HTTP 418); every bot on it must pause."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OrderUnknownError(TemporaryError):
    """Raised when an order's fate is unknown (timeout on create); resolve by client id."""


class OrderRejectedError(ExchangeError):
    """Raised when the exchange refused one order (funds, size, symbol); record it, go on."""


class OperationalError(ExchangeError):
    """Raised when the account cannot trade (credentials, permissions); stop the bot in error."""


class NotifyError(BotEngineError):
    """Base class of errors delivering a notification (webhook, Telegram, email)."""


class DeliveryError(NotifyError):
    """Raised when a notification could not be delivered for now (network, timeout, 429,
    5xx); retry later, after `retry_after` seconds when the channel said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryRejectedError(NotifyError):
    """Raised when a channel refused a notification (4xx, bad login); retrying would not help."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PollerBusyError(BotEngineError):
    """Raised when another `botengine telegram` holds the fleet's poller lock."""
