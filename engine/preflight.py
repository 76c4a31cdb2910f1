"""What `validate` and `start-bot` check beyond the config file itself: that the exchange
lists the bot's symbol, asked the way a tick would ask (ccxt markets, cached per process).

A config can be valid and still fail on its first tick (a typo in the symbol, a market
that was delisted). Checking before anything starts turns that into a field error. When
the exchange cannot be reached (offline, a testnet down) the check says so as a warning
and lets the command go on: a tick would retry, and the operator may know better.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config import BotConfig
from engine.errors import ExchangeError, OperationalError
from engine.settings import Settings


@dataclass
class Findings:
    """Problems (the bot cannot trade: refuse) and warnings (could not check)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_market(config: BotConfig, settings: Settings, where: str) -> Findings:
    """Is `config.symbol` listed on `config.exchange`? `where` prefixes each finding
    (`bots/x.yaml:5: symbol`)."""
    from engine.exchange.factory import data_gateway  # lazy: imports ccxt

    found = Findings()
    try:
        gateway = data_gateway(
            config.exchange,
            redis=None,
            settings=settings,
            base_url=config.base_url,
            options=config.exchange_options,
        )
        gateway.market_rules(config.symbol)
    except OperationalError as exc:
        if "does not list" in str(exc):
            found.problems.append(f"{where}: {config.symbol} is not listed on {config.exchange}")
        else:
            found.warnings.append(f"{where}: could not check {config.exchange}: {exc}")
    except ExchangeError as exc:
        found.warnings.append(
            f"{where}: could not check that {config.exchange} lists {config.symbol}: {exc}"
        )
    return found
