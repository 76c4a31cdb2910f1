"""Resource sampling once a second: RSS and CPU per role, Redis memory.

RSS is summed over each role's processes and their children (prefork pools), so the
peak of a sample is the peak of what the role held at one moment. CPU is cumulative:
every pid ever seen keeps its last reading, so a killed or stopped worker's CPU still
counts, and the CPU of a window is the difference of two cumulative readings.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

import psutil
import redis

from engine.supervise import ProcessGroup


@dataclass(frozen=True)
class Sample:
    """One reading: per role (RSS bytes now, CPU seconds so far); Redis used_memory."""

    t: float
    rss: dict[str, int]
    pss: dict[str, int]  # proportional: pages shared after a fork (prefork) count once
    cpu: dict[str, float]
    redis_used: int
    machine_busy: float  # CPU seconds the whole machine spent busy so far (all processes)


@dataclass
class WindowUsage:
    """Resource use within [t0, t1]."""

    seconds: float
    peak_rss_mb: dict[str, float]
    peak_pss_mb: dict[str, float]
    cpu_s: dict[str, float]
    redis_peak_mb: float
    machine_busy_cores: float = 0.0  # everything on the machine, others' work included

    def cores(self, role: str) -> float:
        """Average cores a role used over the window."""
        return self.cpu_s.get(role, 0.0) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Sampler:
    """A daemon thread that samples the run's processes, Redis and this harness."""

    procs: ProcessGroup
    redis_url: str
    every: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _cpu_by_pid: dict[int, tuple[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _handles: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self) -> Sampler:
        """Start sampling in the background."""
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (one last sample is taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=1)
        while not self._stop.is_set():
            self.samples.append(self.sample(client))
            self._stop.wait(self.every)
        self.samples.append(self.sample(client))

    def _handle(self, pid: int) -> psutil.Process:
        # One handle per pid: psutil's cpu_percent and identity checks want it reused.
        if pid not in self._handles:
            self._handles[pid] = psutil.Process(pid)
        return self._handles[pid]

    def sample(self, client: redis.Redis) -> Sample:
        """Read every role's processes, the harness itself, and Redis."""
        rss: dict[str, int] = {}
        pss: dict[str, int] = {}
        roles = [(p.role, p.popen.pid) for p in list(self.procs.procs.values())]
        redis_used, redis_pid = 0, None
        try:
            info = client.info("memory")
            redis_used = int(info["used_memory"])
            redis_pid = int(client.info("server")["process_id"])
        except (redis.RedisError, OSError, KeyError):
            pass  # restarting (chaos): no reading this second
        if redis_pid is not None:
            roles.append(("redis", redis_pid))
        for role, pid in roles:
            try:
                root = self._handle(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    with proc.oneshot():
                        full = proc.memory_full_info()
                        times = proc.cpu_times()
                except psutil.Error:
                    continue
                rss[role] = rss.get(role, 0) + full.rss
                pss[role] = pss.get(role, 0) + getattr(full, "pss", full.rss)
                self._cpu_by_pid[proc.pid] = (role, times.user + times.system)
        # The harness alone: its children are the roles above.
        harness = self._handle(psutil.Process().pid)
        with harness.oneshot():
            rss["harness"] = harness.memory_info().rss
            times = harness.cpu_times()
            self._cpu_by_pid[harness.pid] = ("harness", times.user + times.system)
        cpu: dict[str, float] = {}
        for role, seconds in self._cpu_by_pid.values():
            cpu[role] = cpu.get(role, 0.0) + seconds
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return Sample(time.time(), rss, pss, cpu, redis_used, busy)

    def window(self, t0: float, t1: float) -> WindowUsage:
        """Peak RSS, CPU seconds and peak Redis memory between two wall-clock times."""
        times = [s.t for s in self.samples]
        lo = bisect.bisect_left(times, t0)
        hi = bisect.bisect_right(times, t1)
        inside = self.samples[lo:hi]
        if not inside:
            return WindowUsage(max(t1 - t0, 0.0), {}, {}, {}, 0.0)
        first = self.samples[max(lo - 1, 0)]
        last = inside[-1]
        peak: dict[str, float] = {}
        peak_pss: dict[str, float] = {}
        for s in inside:
            for role, value in s.rss.items():
                peak[role] = max(peak.get(role, 0.0), value / 2**20)
            for role, value in s.pss.items():
                peak_pss[role] = max(peak_pss.get(role, 0.0), value / 2**20)
        cpu = {role: last.cpu[role] - first.cpu.get(role, 0.0) for role in last.cpu}
        redis_peak = max(s.redis_used for s in inside) / 2**20
        seconds = last.t - first.t
        machine = (last.machine_busy - first.machine_busy) / seconds if seconds > 0 else 0.0
        return WindowUsage(
            seconds,
            {k: round(v, 1) for k, v in peak.items()},
            {k: round(v, 1) for k, v in peak_pss.items()},
            {k: round(v, 2) for k, v in cpu.items()},
            round(redis_peak, 1),
            round(machine, 2),
        )
