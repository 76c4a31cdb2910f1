"""Restart worker processes that exit on their own, as a deployment's supervisor would.

docker/compose.yaml runs workers with `restart: unless-stopped`; systemd units would
use `Restart=always`. A chaos run measures the engine in that setting, so it restarts
a worker that died by itself (not one the harness killed: that one is replaced by the
harness) after `delay_s`, and records each exit with the last critical log line. Such
an exit is a finding in its own right, reported next to the invariants.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.supervise import Proc, ProcessGroup


@dataclass
class Supervisor:
    """Polls the processes of `roles`; calls `respawn(proc)` for each that exited."""

    procs: ProcessGroup
    roles: tuple[str, ...]
    respawn: Callable[[Proc], None]
    lock: threading.Lock
    delay_s: float = 1.0
    exits: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        """Start watching in the background."""
        self._thread = threading.Thread(target=self._run, name="bench-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the harness stops the processes itself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with self.lock:
                dead = [
                    p
                    for p in self.procs.procs.values()
                    if p.role in self.roles and p.popen.poll() is not None
                ]
                for proc in dead:
                    self.procs.procs.pop(proc.name)
                    self.procs.gone.append(proc)
                    self.exits.append(
                        {
                            "process": proc.name,
                            "exit_code": proc.popen.returncode,
                            "at": round(time.time(), 3),
                            "reason": last_critical(proc),
                        }
                    )
            for proc in dead:
                time.sleep(self.delay_s)
                with self.lock:
                    self.respawn(proc)


def last_critical(proc: Proc) -> str | None:
    """The last critical/error event a process logged (why it exited, usually)."""
    reason = None
    for line in proc.log.read_text(errors="replace").splitlines():
        if '"critical"' not in line and '"error"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") in ("critical", "error"):
            reason = str(record.get("event"))[:300]
    return reason
