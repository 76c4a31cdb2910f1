"""`python -m benchmarks.chaos --profile small|tiny|medium [...]`: a fault run.

N bots (part of them live on the simulator, so orders really reach its order log) tick
at a short interval (every third at 3x, so that its slots are parked and dispatched)
while the harness, on a seeded schedule, SIGKILLs workers (starting a replacement each
time), restarts Redis with its data gone and SIGKILLs beat (starting it again a few
seconds later); every bot is started
twice concurrently, and the simulator injects timeouts, 429s, 5xx and lost order
responses throughout. Then all bots stop, a final reconciliation pass runs, and the
invariants in `benchmarks.invariants` are checked. Exit status 1 if any broke.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from benchmarks import fleet, invariants, metrics, report
from benchmarks.infra import Stack, harness_runtime, open_stack
from benchmarks.pgserver import PrivatePostgres, binaries
from benchmarks.profiles import CHAOS_PROFILES, ChaosProfile
from benchmarks.run import quiet_harness_logs
from benchmarks.supervisor import Supervisor
from engine import lifecycle, orders
from engine.exits import ExitRules
from engine.lifecycle import Change
from engine.models import Bot, Fill, Order
from engine.runtime import Runtime
from engine.supervise import Proc

# Engine settings for the run, and the recovery bound they imply: a dead worker's claim
# is abandoned when its heartbeat expires (10 s), the reconciler runs every 2 s and
# acts on slots overdue by 3 s; 30 s leaves room for a loaded 2-core machine.
CHAOS_ENV = {
    "RECONCILE_EVERY_S": "2",
    "RECONCILE_GRACE_S": "3",
    "TICK_TIME_LIMIT_S": "20",
    "MAX_CONSECUTIVE_FAILURES": "5",
    # Slots more than 2 s away are parked: the 3 s bots depend on the dispatcher.
    "ETA_HORIZON_S": "2",
    "DISPATCH_EVERY_S": "1",
}


def exchange_faults(profile: ChaosProfile) -> dict[str, Any]:
    """The simulator's fault rules for the whole run (seeded: same run, same faults)."""
    order = {"path": "/api/v3/order", "method": "POST"}
    reads = {"path": "/api/v3/*", "method": "GET"}
    return {
        "seed": profile.seed,
        "rules": [
            {"kind": "timeout", "rate": profile.order_timeout_rate, "hold_s": 2.0, **order},
            {"kind": "response_lost", "rate": profile.order_response_lost_rate, **order},
            {"kind": "http_429", "rate": profile.read_429_rate, "retry_after_s": 1, **reads},
            {"kind": "http_5xx", "rate": profile.read_5xx_rate, **reads},
        ],
    }


def fault_plan(profile: ChaosProfile) -> list[tuple[float, str]]:
    """(seconds after start, "kill" | "redis_restart" | "beat_kill" | "db_restart") in
    time order, seeded.

    Faults are spread evenly over 15-75 % of the run with a seeded jitter, so each
    one's recovery is seen on its own; their order is shuffled by the seed.
    """
    rng = random.Random(profile.seed)
    kinds = (
        ["kill"] * profile.kills
        + ["redis_restart"] * profile.redis_restarts
        + ["beat_kill"] * profile.beat_kills
        + ["db_restart"] * profile.db_restarts
    )
    rng.shuffle(kinds)
    lo, hi = 0.15 * profile.duration_s, 0.75 * profile.duration_s
    gap = (hi - lo) / max(len(kinds), 1)
    return [
        (round(lo + (i + 0.5) * gap + rng.uniform(-gap / 4, gap / 4), 1), kind)
        for i, kind in enumerate(kinds)
    ]


def start_twice(rt: Runtime, configs: list[Any]) -> dict[str, int]:
    """Start every bot twice at the same moment (two threads); count what each did."""
    changes: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-start") as pool:
        futures = [pool.submit(lifecycle.start, rt, c) for c in configs for _ in range(2)]
        for future in futures:
            change = future.result().change
            changes[change.value] = changes.get(change.value, 0) + 1
    return changes


class Chaos:
    """One fault run on a private stack."""

    def __init__(
        self, stack: Stack, profile: ChaosProfile, pg: PrivatePostgres | None = None
    ) -> None:
        self.stack = stack
        self.profile = profile
        self.pg = pg
        self.rt = harness_runtime()
        self.rng = random.Random(profile.seed + 1)
        self.faults: list[tuple[str, float]] = []
        self.spawned = 0
        self.exit_bots: list[str] = []  # the bots with exits (their stops on the exchange)
        # Kills, respawns and the supervisor all change the process table: one at a time.
        self.lock = threading.Lock()
        self.supervisor = Supervisor(
            stack.procs, ("engine-worker", "beat"), self._respawn, self.lock
        )

    def spawn_worker(self) -> None:
        """One more engine worker (the initial ones and each replacement)."""
        spec = self.profile.worker
        proc = self.stack.procs.worker(
            f"chaos-w{self.spawned}", spec.concurrency, spec.pool, role="engine-worker"
        )
        self.spawned += 1
        self.stack.procs.wait_ready([proc], "worker.ready")

    def kill_worker(self) -> None:
        """SIGKILL a random worker, then start its replacement."""
        with self.lock:
            victims = sorted(p.name for p in self.stack.procs.by_role("engine-worker"))
            victim = self.rng.choice(victims)
            self.stack.procs.kill(victim)
            self.faults.append((f"kill {victim}", time.time()))
            _say(f"SIGKILLed {victim}")
            self.spawn_worker()

    def _respawn(self, proc: Proc) -> None:
        """The supervisor's restart of a process that exited by itself."""
        _say(f"{proc.name} exited by itself ({self.supervisor.exits[-1]['reason']}); restarting")
        if proc.role == "beat":
            self.stack.procs.beat()
        else:
            self.spawn_worker()

    def kill_beat(self) -> None:
        """SIGKILL beat and start it again `beat_down_s` later: meanwhile nothing
        dispatches parked slots or reconciles."""
        with self.lock:
            self.stack.procs.kill("beat")
            self.faults.append(("beat_kill", time.time()))
            _say("SIGKILLed beat")
        time.sleep(self.profile.beat_down_s)
        with self.lock:
            self.stack.procs.beat()
            _say("beat started again")

    def restart_redis(self) -> None:
        """Restart Redis on the same port with nothing in it (no persistence)."""
        assert self.stack.redis is not None  # chaos always runs its own Redis
        self.stack.redis.restart()
        self.faults.append(("redis_restart", time.time()))
        _say("Redis restarted empty")

    def restart_db(self) -> None:
        """Stop the run's PostgreSQL for `db_down_s`, then start it again; the recovery
        bound counts from its return (ticks meanwhile are skipped and unrecorded)."""
        assert self.pg is not None
        self.pg.stop()
        _say(f"PostgreSQL stopped for {self.profile.db_down_s:g} s")
        time.sleep(self.profile.db_down_s)
        self.pg.start()
        self.faults.append(("db_restart", time.time()))
        _say("PostgreSQL started again")

    def run(self) -> dict[str, Any]:
        """The whole run: start, faults, stop, reconcile, check."""
        p = self.profile
        for _ in range(p.worker.workers):
            self.spawn_worker()
        self.stack.procs.beat()
        self.supervisor.start()
        live_every = round(1 / p.live_fraction) if p.live_fraction > 0 else 0
        configs = [
            c.model_copy(update={"check_interval": 3 * p.interval_s})
            if p.parked_every and i % p.parked_every == p.parked_every - 1
            else c
            for i, c in enumerate(
                fleet.fleet("x", p.bots, p.interval_s, dca_every=1, live_every=live_every)
            )
        ]
        live = {c.name for c in configs if c.mode == "live"}
        exits = ExitRules.model_validate(p.exits)
        # (buying every 5th tick: each buy moves the stop, cancel and new, and a bot
        # buying every tick would spend its life between two stops)
        configs = [
            fleet.bot_config(c.name, c.check_interval, c.symbol, dca_every=5, live=True).model_copy(
                update={"exits": exits}
            )
            if c.name in live and i % 2 == 0
            else c
            for i, c in enumerate(configs)
        ]
        self.exit_bots = sorted(c.name for c in configs if c.exits.active)
        self.stack.sim("/_sim/faults", exchange_faults(p))
        t0 = time.time()
        changes = start_twice(self.rt, configs)
        _say(f"started {p.bots} bots twice each: {changes}")
        inject = {
            "kill": self.kill_worker,
            "redis_restart": self.restart_redis,
            "beat_kill": self.kill_beat,
            "db_restart": self.restart_db,
        }
        for offset, kind in fault_plan(p):
            _sleep_until(t0 + offset)
            inject[kind]()
        _sleep_until(t0 + p.duration_s)
        self._await_recovery([c.name for c in configs])
        protected = self._protection()
        # Read before stopping: a stop turns an errored bot into a stopped one.
        with Session(self.rt.db) as session:
            statuses = {b.name: str(b.status) for b in session.exec(select(Bot))}
        stopped_ms = self._stop_all([c.name for c in configs])
        stopped_at = min(stopped_ms.values()) / 1000
        time.sleep(3.0)  # anything still in flight would reach the exchange now
        fired = self.stack.sim("/_sim/faults")
        self.stack.sim("/_sim/faults", {"clear": True})
        self._final_reconcile([c for c in configs if c.name in live])
        self.supervisor.stop()
        procs = self.stack.procs
        procs.stop([p.name for p in procs.procs.values() if p.role in ("engine-worker", "beat")])
        return self._check(
            configs, live, changes, statuses, stopped_ms, stopped_at, fired, t0, protected
        )

    def _await_recovery(self, names: list[str]) -> None:
        """Keep running until every bot ticked after the last fault (or the bound ran
        out), so a late fault is judged on its recovery, not on the run's end."""
        if not self.faults:
            return
        last = self.faults[-1][1]

        def resumed() -> bool:
            ticks = metrics.engine_ticks(self.rt.db, "x")
            traded = {t.bot for t in ticks if t.started > last and t.outcome != "skipped"}
            return traded >= set(names)

        deadline = last + self.profile.recovery_bound_s + 1.0
        while time.time() < deadline and not resumed():
            time.sleep(1.0)

    def _protection(self) -> invariants.Check:
        """After the last fault, while the bots run: every exit bot holding a position
        has its stop resting on the exchange. Asked three times 2 s apart: a bot counts
        as unprotected only if it was each time (a buy's tick moves the stop, cancel
        then new, and a sample may fall between the two)."""
        samples = []
        for attempt in range(3):
            if attempt:
                time.sleep(2.0)
            samples.append(self._positions_and_stops())
        return invariants.positions_protected(samples)

    def _positions_and_stops(self) -> tuple[dict[str, float], dict[str, float]]:
        """Each exit bot's sellable position (database), and the base its resting stops
        cover on the exchange."""
        positions = {}
        for name in self.exit_bots:
            pnl = orders.position_and_pnl(self.rt.db, name)
            positions[name] = pnl.position if pnl.position * pnl.average_cost >= 10 else 0.0
        with Session(self.rt.db) as session:
            query = select(Order.client_order_id, Order.bot).where(
                Order.bot.in_(self.exit_bots)  # type: ignore[attr-defined]
            )
            owner = dict(session.exec(query).all())
        covered: dict[str, float] = {}
        for o in self.stack.sim("/_sim/orders")["orders"]:
            bot = owner.get(o["clientOrderId"])
            if bot and o["type"] == "STOP_LOSS_LIMIT" and o["status"] == "NEW":
                covered[bot] = covered.get(bot, 0.0) + float(o["origQty"])
        return positions, covered

    def _stop_all(self, names: list[str]) -> dict[str, float]:
        stopped: dict[str, float] = {}

        def stop(name: str) -> None:
            lifecycle.stop(self.rt, name)
            stopped[name] = time.time() * 1000  # after stop returned: no order from here

        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-stop") as pool:
            list(pool.map(stop, names))
        return stopped

    def _fills(self, bots: list[str]) -> dict[str, list[Fill]]:
        with Session(self.rt.db) as session:
            rows = session.exec(
                select(Fill).where(Fill.bot.in_(bots)).order_by(Fill.filled_at, Fill.id)  # type: ignore[attr-defined]
            ).all()
        out: dict[str, list[Fill]] = {b: [] for b in bots}
        for row in rows:
            out[row.bot].append(row)
        return out

    def _final_reconcile(self, live: list[Any]) -> None:
        """Settle every pending/unknown/open order by client order id (grace 0: the bots
        are stopped, nothing is still on its way)."""
        for config in live:
            orders.reconcile(self.rt.db, config.name, self.rt.gateway(config), grace_s=0)

    def _check(
        self,
        configs: list[Any],
        live: set[str],
        changes: dict[str, int],
        statuses: dict[str, str],
        stopped_ms: dict[str, float],
        stopped_at: float,
        fired: dict[str, Any],
        t0: float,
        protected: invariants.Check,
    ) -> dict[str, Any]:
        db = self.rt.db
        logs = self.stack.procs.logs("engine-worker")
        started = metrics.started_counts(logs, "x")
        ticks = metrics.engine_ticks(db, "x")
        exchange = self.stack.sim("/_sim/orders")["orders"]
        dup_rejections = self.stack.sim("/_sim/bench")["duplicate_rejections"]
        with Session(db) as session:
            rows = list(session.exec(select(Order).where(Order.bot.in_(sorted(live)))))  # type: ignore[attr-defined]
        db_orders = [(o.client_order_id, o.status) for o in rows]
        owner = {o.client_order_id: o.bot for o in rows}
        exchange_ids = [o["clientOrderId"] for o in exchange]
        checks = [
            invariants.no_slot_twice(started),
            invariants.no_order_sent_twice(
                dup_rejections, exchange_ids, [cid for cid, _ in db_orders]
            ),
            invariants.db_matches_exchange(db_orders, exchange_ids),
            *(
                invariants.recovered_after_faults(
                    self.faults,
                    ticks,
                    [c.name for c in configs],
                    self.profile.recovery_bound_s,
                    stopped_at,
                    trading=trading,
                )
                for trading in (False, True)
            ),
            invariants.no_order_after_stop(exchange, owner, stopped_ms),
            invariants.exits_never_sold_twice(self._fills(self.exit_bots)),
            protected,
            invariants.no_bot_in_error(statuses),
            invariants.Check(
                "double_start_one_chain_per_bot",
                changes.get(Change.STARTED.value, 0) == len(configs),
                changes,
            ),
            # A fault the engine must ride out (a Redis restart, a killed peer) may not
            # kill a process; the supervisor's restart would hide it.
            invariants.Check(
                "no_process_exited_by_itself",
                not self.supervisor.exits,
                {"exits": self.supervisor.exits},
            ),
        ]
        sim_stats = self.stack.sim("/_sim/stats")
        return {
            "profile": self.profile.name,
            "settings": asdict(self.profile),
            "engine_env": CHAOS_ENV,
            "bots": len(configs),
            "live_bots": len(live),
            "exit_bots": len(self.exit_bots),
            "ticks_recorded": len(ticks),
            "outcomes": dict(sorted(_count(t.outcome for t in ticks).items())),
            "faults": [{"fault": k, "at_s": round(t - t0, 1)} for k, t in self.faults],
            "exchange_faults_fired": dict(sim_stats.get("faults", {})),
            "exchange_fault_rules": [
                {k: r[k] for k in ("kind", "path", "method", "rate", "fired")}
                for r in fired["rules"]
            ],
            # Processes that died by themselves and were restarted (compose's restart
            # policy would do the same); the invariant above fails on any.
            "unexpected_exits": self.supervisor.exits,
            "log_events": metrics.event_counts(
                logs,
                (
                    "tick.duplicate",
                    "tick.dropped",
                    "tick.duplicate_record",
                    "reconcile.advanced",
                    "reconcile.restored",
                    "reconcile.fenced",
                    "tick.unrecorded",
                    "fleet.db_outage",
                    "fleet.paused",
                    "order.unknown",
                    "order.duplicate",
                    "order.fenced",
                    "order.reconciled",
                    "bot.error",
                ),
            ),
            "invariants": [asdict(c) for c in checks],
            "ok": all(c.ok for c in checks),
        }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _say(message: str) -> None:
    print(f"[chaos] {datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


def markdown(result: dict[str, Any]) -> str:
    """The invariants as a table, then the fault figures."""
    lines = [
        f"### botengine chaos run (profile {result['profile']}): "
        f"{'PASS' if result['ok'] else 'FAIL'}",
        "",
        f"{result['bots']} bots ({result['live_bots']} live on the simulator) at "
        f"{result['settings']['interval_s']:g} s (1 in {result['settings']['parked_every']}"
        f" at 3x, parked) for {result['settings']['duration_s']:g} s;"
        f" {result['ticks_recorded']} ticks {result['outcomes']}.",
        "",
        "| invariant | ok | figures |",
        "|---|:-:|---|",
    ]
    for check in result["invariants"]:
        detail = json.dumps(check["detail"], separators=(",", ":"))
        lines.append(f"| {check['name']} | {'yes' if check['ok'] else 'NO'} | `{detail}` |")
    lines += [
        "",
        f"faults: {result['faults']}"
        + (f" ({result['skipped']})" if result.get("skipped") else ""),
        f"exchange faults fired: {result['exchange_faults_fired']}",
        f"log events: {result['log_events']}",
        f"processes that exited by themselves (restarted as compose's `restart: "
        f"unless-stopped` would): {result['unexpected_exits'] or 'none'}",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[ChaosProfile, argparse.Namespace]:
    """The profile named by `--profile`, with flags applied over it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--profile", default="small", choices=sorted(CHAOS_PROFILES))
    parser.add_argument("--bots", type=int)
    parser.add_argument("--interval", type=float, dest="interval_s")
    parser.add_argument("--duration", type=float, dest="duration_s")
    parser.add_argument("--kills", type=int)
    parser.add_argument("--redis-restarts", type=int)
    parser.add_argument("--beat-kills", type=int)
    parser.add_argument("--db-restarts", type=int)
    parser.add_argument("--db-down", type=float, dest="db_down_s")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--pool", choices=["threads", "prefork", "gevent", "solo"])
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--database-url", help="default: SQLite in the run's temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (logs, db)")
    parser.add_argument("--out", help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    overrides = {
        k: getattr(args, k)
        for k in (
            "bots",
            "interval_s",
            "duration_s",
            "kills",
            "redis_restarts",
            "beat_kills",
            "db_restarts",
            "db_down_s",
            "seed",
            "workers",
            "pool",
            "concurrency",
        )
    }
    return CHAOS_PROFILES[args.profile].with_overrides(**overrides), args


def main(argv: list[str] | None = None) -> int:
    """Run, write `chaos-<profile>-<time>.{json,md}`, print the table; 1 on a broken
    invariant."""
    profile, args = parse_args(argv)
    run_id = f"chaos-{profile.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    pg, skipped = None, None
    if profile.db_restarts:
        if args.database_url is not None:
            skipped = "db_restart skipped: --database-url is not the run's own server"
        elif binaries() is None:
            skipped = "db_restart skipped: no PostgreSQL server binaries (initdb, pg_ctl)"
        else:
            pg = PrivatePostgres().init()
        if skipped:
            _say(skipped)
            profile = profile.with_overrides(db_restarts=0)
    database_url = pg.url if pg is not None else args.database_url
    try:
        with open_stack(
            database_url=database_url, extra_env=CHAOS_ENV, keep=args.keep, seed=profile.seed
        ) as stack:
            quiet_harness_logs()
            _say(f"{run_id}: run dir {stack.workdir}, database {database_url or 'SQLite'}")
            result = Chaos(stack, profile, pg).run()
    finally:
        if pg is not None:
            pg.destroy()
    result["skipped"] = skipped
    result["run"] = run_id
    result["meta"] = {
        "machine": report.machine(),
        "command": " ".join(["python -m benchmarks.chaos", *sys.argv[1:]]),
    }
    outdir = Path(args.out) if args.out else report.RESULTS
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{run_id}.json").write_text(json.dumps(report.clean(result), indent=2) + "\n")
    text = markdown(result)
    (outdir / f"{run_id}.md").write_text(text)
    print(text)
    print(f"results: {outdir / run_id}.json")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
