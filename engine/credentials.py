"""Exchange keys by declared name: a config says `credentials: binance-main`, the operator
declares what that name holds, out of band.

A set named `binance-main` is declared by

- environment variables `BOTENGINE_CRED_BINANCE_MAIN_KEY` and `..._SECRET` (and
  optionally `..._PASSWORD`, the passphrase some exchanges want), or
- files of those names (or the same names in lower case) in the `CREDENTIALS_DIR`
  directory, Docker-secrets style (one value per file; a trailing newline is ignored).

A variable wins over a file of the same name. Set names are lowercase letters, digits,
`-` and `_`; both `-` and `_` become `_` in the variable name, so `binance-main` and
`binance_main` are one set.

Why a fixed prefix: a config used to name any environment variable (`api_key_env:
API_TOKEN`), so whoever could write a config could have the worker send the API token,
a database password or anything else in its environment to an exchange URL of their
choosing. Now a config can only reach variables the operator created for the purpose.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import OperationalError

PREFIX = "BOTENGINE_CRED_"
SET_NAME = r"^[a-z0-9][a-z0-9_-]{0,47}$"
_SET_NAME = re.compile(SET_NAME)
_MAX_FILE_BYTES = 16 * 1024
LEGACY_KEYS = frozenset({"api_key_env", "secret_env", "password_env"})
LEGACY_MESSAGE = (
    "the {api_key_env, secret_env} form is no longer accepted (a config could name any"
    " variable of the worker); declare a credential set instead, e.g. set"
    " BOTENGINE_CRED_BINANCE_MAIN_KEY and BOTENGINE_CRED_BINANCE_MAIN_SECRET, and write"
    " `credentials: binance-main`"
)


class CredentialsError(OperationalError):
    """Raised when a config names a credential set that is not (fully) declared; the bot
    cannot trade until the operator declares it."""


@dataclass(frozen=True)
class Variables:
    """The names that declare one credential set."""

    key: str
    secret: str
    password: str

    def describe(self) -> str:
        """`A and B (optional C)`, for messages."""
        return f"{self.key} and {self.secret} (optional {self.password})"


def variables(name: str) -> Variables:
    """The variable and file names of set `name` (`binance-main`: BOTENGINE_CRED_BINANCE_MAIN_*)."""
    if not _SET_NAME.match(name):
        raise ValueError(f"bad credential set name {name!r}: lowercase letters, digits, - and _")
    stem = PREFIX + name.upper().replace("-", "_")
    return Variables(f"{stem}_KEY", f"{stem}_SECRET", f"{stem}_PASSWORD")


@dataclass(frozen=True)
class CredentialSet:
    """One exchange account's keys (never printed)."""

    name: str
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CredentialStore:
    """Where declared sets are read from: an environment and an optional directory."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    directory: Path | None = None

    def _value(self, var: str) -> str | None:
        value = self.environ.get(var)
        if value:
            return value
        if self.directory is None:
            return None
        for file_name in (var, var.lower()):
            path = self.directory / file_name
            try:
                if not path.is_file() or path.stat().st_size > _MAX_FILE_BYTES:
                    continue
                text = path.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError):
                continue
            if text:
                return text
        return None

    def _where(self, names: str) -> str:
        if self.directory is None:
            return f"set {names}"
        return f"set {names}, or put files of those names in {self.directory}"

    def problem(self, name: str) -> str | None:
        """Why set `name` cannot be used (a message naming what to define), or None."""
        try:
            names = variables(name)
        except ValueError as exc:
            return str(exc)
        missing = [v for v in (names.key, names.secret) if self._value(v) is None]
        if not missing:
            return None
        if len(missing) == 2:
            return f"credential set {name!r} is not declared: {self._where(names.describe())}"
        return f"credential set {name!r} is incomplete: {self._where(missing[0])}"

    def lookup(self, name: str) -> CredentialSet:
        """The keys of set `name`; CredentialsError (naming the variables) if undeclared."""
        problem = self.problem(name)
        if problem is not None:
            raise CredentialsError(problem)
        names = variables(name)
        key, secret = self._value(names.key), self._value(names.secret)
        assert key is not None
        assert secret is not None
        return CredentialSet(name, key, secret, self._value(names.password))
