"""The exchange layer: the only package that imports ccxt.

Modules, one concept each:

- `gateway`: the Gateway protocol every implementation satisfies (fixed contract).
- `factory.gateway_for(config, redis=, db=, settings=)`: a bot config → its Gateway.
- `ccxt_gateway.CcxtGateway`: live trading over a real ccxt client, any exchange id.
- `paper.PaperGateway`: the paper broker (default mode), fills from `fills`.
- `clients`: ccxt clients and loaded markets, cached per process (the one such cache).
- `ratelimit`: shared Redis rate limits, 429 cool-downs, 418 bans (`ban_until`).
- `marketdata`: shared Redis market-data cache with single-flight fetching, kept warm
  off the tick path while bots keep reading it.
- `retry`: the tenacity policy for reads; `errors`: the one ccxt error mapping.
- `catalog`: known exchange ids and their client-order-id rules.
- `simulator`: the loopback Binance imitation used by tests, demo and benchmarks.
"""
