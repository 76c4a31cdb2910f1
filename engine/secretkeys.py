"""Which config keys name secrets: refused when a config is read, masked when one is shown.

A bot config never holds a secret: keys come from a declared credential set
(`engine.credentials`). A key is taken for a secret by its name alone, at any depth
(`exchange_options.options.apiKey` as much as a top-level `secret`), after lowercasing
and dropping `_`, `-` and `.`, so `api_key`, `apiKey` and `API-KEY` are one name.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_REFUSAL = "inline secrets are not allowed; declare a credential set and name it in credentials"
INLINE_SECRET = _REFUSAL
"""The message for a secret-named key in a config."""

# A normalised key containing one of these names a secret (`secretKey`, `apiSecret`,
# `accessToken`, `walletPrivateKey`, ...).
_PARTS = (
    "apikey",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "privatekey",
    "accesskey",
    "signingkey",
    "token",
    "mnemonic",
    "authorization",
    "cookie",
)
# Short names that would be too broad as parts (`uid` is in `guide`, `auth` in `author`).
_WHOLE = frozenset({"uid", "login", "twofa", "2fa", "otp", "pin", "auth", "jwt"})
_DROP = re.compile(r"[_\-.\s]")

Path = tuple[str | int, ...]


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (`apiKey`, `secret`, `password`, `uid`, ...)."""
    if not isinstance(key, str):
        return False
    name = _DROP.sub("", key.lower())
    return name in _WHOLE or any(part in name for part in _PARTS)


def secret_paths(data: Any, skip: frozenset[Path] = frozenset()) -> list[Path]:
    """Paths of every secret-named key in `data` (iteratively; `skip` subtrees ignored)."""
    found: list[Path] = []
    stack: list[tuple[Any, Path]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if path in skip:
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                child = (*path, key if isinstance(key, str | int) else str(key))
                if is_secret_key(key):
                    found.append(child)
                else:
                    stack.append((item, child))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
    return sorted(found, key=str)


def redact(data: Any) -> Any:
    """A copy of `data` with the value of every secret-named key replaced by `***`.

    For showing stored configs: one stored before secrets were refused may hold some.
    """
    if isinstance(data, dict):
        return {
            key: MASK if is_secret_key(key) and value not in (None, "") else redact(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact(item) for item in data]
    return data
