"""Where a bot's requests may go: the `base_url` allow-list and the `exchange_options`
allow-list, one policy for files, the CLI, the API and the worker.

A config is written by whoever holds the API token; the requests it causes are signed
with the operator's exchange keys. Left open, `base_url` sent signed requests (and the
API key header) to any listener, including cloud metadata addresses, and
`exchange_options` could set `httpProxy`, `urls`, `headers` or `verbose` (signed URLs in
the logs). So:

`base_url` is parsed strictly — `http` or `https`, a host, an optional port and path;
no user info (`user@host`), query, fragment, percent-encoding, backslash, IPv6 zone id,
trailing dot, non-ASCII, or IPv4 written other than as four decimals (`2130706433`,
`0x7f.1`, `127.1` are refused: resolvers disagree on them) — and its scheme, host and
port are compared with the operator's `ALLOWED_BASE_URLS` entries:

- `127.0.0.0/8`, `::1`, `10.0.0.5`: an IP network (or address); matches an IP-literal
  host inside it, any scheme and port. Host *names* never match a network: nothing is
  resolved, so DNS cannot widen the list.
- `localhost`, `testnet.binance.vision`, `proxy.internal:8443`: a host name (exactly,
  case-insensitive, no subdomains), any scheme; any port unless one is given.
- `https://testnet.binance.vision`: an exact origin (scheme, host and port; the port
  defaults to 80/443).

The default is loopback only (`127.0.0.0/8,::1,localhost`). A config without `base_url`
talks to the exchange's own URLs (or, for `exchange: simulator`, to SIMULATOR_URL): those
come from ccxt and the operator, not from the config, and are not checked.

`exchange_options` may hold `timeout`, `rateLimit`, `enableRateLimit` and `options`
(exchange-specific settings such as `defaultType`, `recvWindow`); inside `options`, no
key that redirects or leaks requests (anything about proxies, URLs, hosts, headers,
sockets, TLS, cookies, user agents, verbose logging) and no URL value. The operator adds
keys with `ALLOWED_EXCHANGE_OPTIONS` (`headers`, `options.hostname`: that key and all
below it). Secret-named keys are refused whatever the operator allows, and every ccxt
client is built with `verbose=False` (engine.exchange.clients).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.secretkeys import INLINE_SECRET, is_secret_key

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_ALLOWED_BASE_URLS = ("127.0.0.0/8", "::1", "localhost")
OPTION_KEYS = ("timeout", "rateLimit", "enableRateLimit", "options")
_NUMBER_RANGES = {"timeout": (100, 300_000), "rateLimit": (0, 60_000)}
_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~!$&'()*+,;=:/-]*)?$"
)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
# Substrings of a normalised `options` key, and whole words of it, that redirect or leak.
_DENIED_PARTS = (
    "proxy",
    "url",
    "header",
    "hostname",
    "verbose",
    "socket",
    "cookie",
    "redirect",
    "useragent",
    "endpoint",
    "webhook",
    "callback",
    "certificate",
)
_DENIED_WORDS = frozenset(
    {"host", "hosts", "uri", "uris", "ws", "wss", "ssl", "tls", "cert", "certs", "verify"}
    | {"env", "origin", "origins", "domain", "domains", "agent", "hook", "hooks", "trust"}
)


@dataclass(frozen=True)
class Origin:
    """A parsed base URL: where its requests go."""

    scheme: str
    host: str
    ip: IpAddress | None
    port: int
    path: str
    explicit_port: bool


def _ip(host: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    # ::ffff:127.0.0.1 is 127.0.0.1 for every purpose here.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_base_url(url: str) -> Origin:
    """Parse a base URL strictly; ValueError says what to write instead."""
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("must be plain ASCII without spaces (write IDN hosts as xn--...)")
    for char, problem in (
        ("@", "must not carry user info (user@host)"),
        ("\\", "must not contain backslashes"),
        ("%", "must not contain percent-encoding or an IPv6 zone id"),
        ("?", "must not have a query (?...)"),
        ("#", "must not have a fragment (#...)"),
    ):
        if char in url:
            raise ValueError(problem)
    match = _URL.match(url)
    if match is None:
        raise ValueError("must look like https://host[:port][/path]")
    scheme = match["scheme"].lower()
    if scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    host = match["host"].lower()
    if host.startswith("["):
        ip = _ip(host[1:-1])
        if ip is None:
            raise ValueError(f"{host} is not an IPv6 address")
    else:
        ip = _host_ip(host)
    port = int(match["port"]) if match["port"] else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return Origin(
        scheme,
        str(ip) if ip is not None else host,
        ip,
        port,
        match["path"] or "",
        match["port"] is not None,
    )


def _host_ip(host: str) -> IpAddress | None:
    """The IPv4 address a host *name* spells, refusing ambiguous spellings."""
    if host.endswith("."):
        raise ValueError("write the host without a trailing dot")
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    if not _NUMERIC_LABEL.match(labels[-1]):
        return None
    # A name ending in a number is an IPv4 address to URL parsers: only a.b.c.d is clear.
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError("write IPv4 addresses as four decimal numbers (a.b.c.d)") from None
    return address


@dataclass(frozen=True)
class Rule:
    """One `ALLOWED_BASE_URLS` entry."""

    entry: str
    network: IpNetwork | None = None
    origin: Origin | None = None
    any_scheme: bool = False

    def matches(self, url: Origin) -> bool:
        """Whether `url` goes where this entry allows."""
        if self.network is not None:
            return (
                url.ip is not None
                and url.ip.version == self.network.version
                and (url.ip in self.network)
            )
        rule = self.origin
        assert rule is not None
        if rule.host != url.host:
            return False
        if self.any_scheme:
            return not rule.explicit_port or rule.port == url.port
        return rule.scheme == url.scheme and rule.port == url.port


def parse_rule(entry: str) -> Rule:
    """An `ALLOWED_BASE_URLS` entry: IP network, host[:port] or scheme://host[:port]."""
    entry = entry.strip()
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        network = None
    if network is not None:
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
            mapped = network.network_address.ipv4_mapped
            if mapped is not None:
                network = ipaddress.IPv4Network(mapped)
        return Rule(entry, network=network)
    any_scheme = "://" not in entry
    try:
        origin = parse_base_url(f"http://{entry}" if any_scheme else entry)
    except ValueError as exc:
        raise ValueError(f"bad entry {entry!r}: {exc}") from None
    if origin.path not in ("", "/"):
        raise ValueError(f"bad entry {entry!r}: a path is not allowed (origins only)")
    return Rule(entry, origin=origin, any_scheme=any_scheme)


@dataclass(frozen=True)
class OutboundPolicy:
    """The operator's allow-lists (from `Settings.outbound_policy()`)."""

    rules: tuple[Rule, ...] = tuple(parse_rule(e) for e in DEFAULT_ALLOWED_BASE_URLS)
    extra_options: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, urls: Iterable[str], options: Iterable[str] = ()) -> OutboundPolicy:
        """A policy from `ALLOWED_BASE_URLS` and `ALLOWED_EXCHANGE_OPTIONS` entries."""
        return cls(tuple(parse_rule(e) for e in urls), frozenset(options))

    def base_url_problem(self, url: str) -> str | None:
        """Why `url` may not be a bot's base URL, or None."""
        try:
            origin = parse_base_url(url)
        except ValueError as exc:
            return str(exc)
        if any(rule.matches(origin) for rule in self.rules):
            return None
        where = f"{origin.scheme}://{origin.host}:{origin.port}"
        return f"{where} is not in ALLOWED_BASE_URLS (ask the operator to add it)"

    def option_problems(self, options: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """(path below exchange_options, message) for every refused option."""
        problems: list[tuple[tuple[str, ...], str]] = []
        for key, value in options.items():
            path = (str(key),)
            if is_secret_key(key):
                problems.append((path, INLINE_SECRET))
            elif key in self.extra_options:
                continue
            elif key not in OPTION_KEYS:
                problems.append((path, _not_allowed()))
            elif key == "options":
                if not isinstance(value, dict):
                    problems.append((path, "must be a mapping"))
                else:
                    problems += self._inner_problems(value, path)
            elif key == "enableRateLimit":
                if not isinstance(value, bool):
                    problems.append((path, "must be true or false"))
            elif (limits := _NUMBER_RANGES.get(key)) is not None:
                low, high = limits
                if isinstance(value, bool) or not isinstance(value, int | float):
                    problems.append((path, "must be a number (milliseconds)"))
                elif not low <= value <= high:
                    problems.append((path, f"must be between {low} and {high} (milliseconds)"))
        return problems

    def _inner_problems(
        self, options: dict[str, Any], base: tuple[str, ...]
    ) -> list[tuple[tuple[str, ...], str]]:
        problems: list[tuple[tuple[str, ...], str]] = []
        stack: list[tuple[Any, tuple[str, ...]]] = [(options, base)]
        while stack:
            value, path = stack.pop()
            if ".".join(path) in self.extra_options:
                continue
            if isinstance(value, dict):
                for key, item in value.items():
                    child = (*path, str(key))
                    if is_secret_key(key):
                        problems.append((child, INLINE_SECRET))
                    elif _redirects(str(key)) and ".".join(child) not in self.extra_options:
                        problems.append((child, _REDIRECTS))
                    else:
                        stack.append((item, child))
            elif isinstance(value, list):
                stack.extend((item, (*path, str(i))) for i, item in enumerate(value))
            elif isinstance(value, str) and ("://" in value or value.startswith("//")):
                problems.append((path, "URLs are not allowed in exchange_options"))
        return sorted(problems)


_REDIRECTS = (
    "refused: it could redirect or expose requests (proxies, URLs, hosts, headers,"
    " verbose logging); the operator may allow it with ALLOWED_EXCHANGE_OPTIONS"
)


def _not_allowed() -> str:
    return (
        f"not an allowed exchange option (allowed: {', '.join(OPTION_KEYS)}; the operator"
        " may allow more with ALLOWED_EXCHANGE_OPTIONS)"
    )


def _redirects(key: str) -> bool:
    """Whether an `options` key is about where or how requests are sent or logged."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", key)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", spaced).lower()
    words = set(re.findall(r"[a-z]+|[0-9]+", spaced))
    flat = re.sub(r"[^a-z0-9]", "", key.lower())
    return bool(words & _DENIED_WORDS) or any(part in flat for part in _DENIED_PARTS)
