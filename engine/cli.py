"""The `botengine` command line (also `python -m engine`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, col, select

from engine.errors import BotConfigError, BotEngineError, BrokerUnavailableError
from engine.models import Bot, Tick
from engine.views import bot_summary, tick_row

app = typer.Typer(
    name="botengine",
    help="Run many trading bots on shared Celery workers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

NO_BROKER = (
    "cannot reach the broker/Redis at {url}: start Redis, or run everything embedded with "
    "`make demo`, or one bot in-process with `botengine run FILE`"
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    # soft_wrap: one message is one line, whatever the terminal width.
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _runtime(require_broker: bool = True) -> Any:
    from engine.db import migrate  # lazy: alembic and the runtime load in ~0.3 s
    from engine.embedded import reachable
    from engine.runtime import get_runtime
    from engine.settings import get_settings, redact_url

    settings = get_settings()
    if require_broker:
        for url in (settings.redis_url, settings.celery_broker_url):
            if url.startswith(("redis://", "rediss://")) and not reachable(url):
                raise _fail(NO_BROKER.format(url=redact_url(url)))
    migrate(settings.database_url)
    return get_runtime()


def _configure_cli_logging() -> None:
    from engine.logging import configure_logging, register_secrets
    from engine.settings import get_settings

    settings = get_settings()
    configure_logging(
        "WARNING" if settings.log_level == "INFO" else settings.log_level,
        settings.log_format,
        stream=sys.stderr,
    )
    register_secrets(settings.secret_values())


@app.callback()
def _main() -> None:
    """Run many trading bots on shared Celery workers."""
    _configure_cli_logging()


Targets = Annotated[
    list[str] | None,
    typer.Argument(help="Bot files, directories of them, or glob patterns", show_default=False),
]
EveryBot = Annotated[bool, typer.Option("--all", help="Every stored bot")]
Labels = Annotated[
    list[str] | None,
    typer.Option("--label", help="Stored bots carrying this label (repeatable)"),
]
Offline = Annotated[
    bool, typer.Option(help="Do not ask the exchanges whether they list the symbols")
]


@app.command()
def validate(targets: Targets = None, offline: Offline = False) -> None:
    """Check bot config files without starting anything (and, unless --offline, that
    each exchange lists the bot's symbol)."""
    loaded = _checked_files(targets or [], offline, quiet_ok=False)
    if loaded is None:
        raise typer.Exit(1)


def _checked_files(
    targets: list[str], offline: bool, *, quiet_ok: bool
) -> list[tuple[Path, Any]] | None:
    """Read, validate and (unless `offline`) preflight every named file, printing each
    problem; the (path, config) pairs, or None when any file has a problem."""
    from engine import bulk
    from engine.settings import get_settings

    if not targets:
        raise _fail("give bot files, directories or glob patterns", 2)
    try:
        paths = bulk.bot_files(targets)
    except BotConfigError as exc:
        _print_lines(exc.problems)
        return None
    with _progress("reading", len(paths)) as step:
        loaded, problems = bulk.load_configs(_stepping(paths, step))
    _print_lines(problems)
    failed = {p.split(":", 1)[0] for p in problems}
    if not offline:
        items = [(f"{path}:{_line_of(path, 'symbol')}: symbol", c) for path, c in loaded]
        with _progress("checking markets", len(items)) as step:
            findings = bulk.check_markets(items, get_settings(), on_each=step)
        for (path, _), found in zip(loaded, findings, strict=True):
            _print_lines(found.problems)
            _print_lines(found.warnings, "warning: ")
            if found.problems:
                failed.add(str(path))
    for path, config in loaded:
        if str(path) not in failed and not quiet_ok:
            out.print(
                f"{path}: ok ({config.name}, {config.strategy.name}, {config.symbol})",
                markup=False,
                highlight=False,
            )
    return None if failed else loaded


def _print_lines(lines: list[str], prefix: str = "") -> None:
    for line in lines:
        err.print(prefix + line, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr for `total` steps (none for a single one); yields the
    function that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"[progress.description]{what}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=total < 2,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda *_: bar.advance(task)


def _stepping(items: list[Path], step: Callable[..., None]) -> Iterator[Path]:
    for item in items:
        yield item
        step()


def _line_of(path: Path, key: str) -> int:
    """The 1-based line of a top-level key in a bot file (1 when unknown)."""
    from engine.yamlsafe import DocumentError, parse_yaml

    try:
        return parse_yaml(path.read_text(encoding="utf-8")).lines.get((key,), 1)
    except (DocumentError, OSError, UnicodeDecodeError):
        return 1


@app.command("start-bot")
def start_bot(targets: Targets = None, every: EveryBot = False, labels: Labels = None) -> None:
    """Start bots from files, directories or globs, or stored bots by --all / --label
    (idempotent; a changed config takes effect from the next slot). Files are all
    checked first: one bad file starts nothing."""
    from engine import bulk
    from engine.health import NO_TICK_CONSUMER

    if targets and (every or labels):
        raise _fail("give bot files, or --all / --label, not both", 2)
    if targets:
        loaded = _checked_files(targets, offline=False, quiet_ok=True)
        if loaded is None:
            raise typer.Exit(1)  # nothing started
        rt = _runtime()
        with _progress("starting", len(loaded)) as step:
            outcomes = bulk.start_configs(rt, [(str(p), c) for p, c in loaded], on_each=step)
    else:
        rt = _runtime()
        outcomes = _apply_stored(rt, "start", [], every, labels)
    _report(outcomes)
    _warn_unhealthy(rt, only=(NO_TICK_CONSUMER,))
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _apply_stored(
    rt: Any, action: str, names: list[str], every: bool, labels: list[str] | None
) -> list[Any]:
    """`action` on the named bots plus those --all / --label select."""
    from engine import bulk

    if not (names or every or labels):
        raise _fail("give bot names or files, or --all / --label", 2)
    try:
        chosen = bulk.select_bots(rt.db, names=names, labels=labels or [], every=every)
    except BotEngineError as exc:
        raise _fail(str(exc)) from None
    if not chosen:
        raise _fail("no stored bot matches")
    with _progress(f"{action} bots", len(chosen)) as step:
        return bulk.apply(rt, action, chosen, on_each=step)


def _report(outcomes: list[Any]) -> None:
    """One line per bot, and a count when there are many."""
    from collections import Counter

    for o in outcomes:
        if o.ok:
            out.print(f"{o.bot}: {o.change} (generation {o.generation})", markup=False)
        else:
            err.print(f"{o.bot}: error: {o.error}", markup=False, soft_wrap=True)
    if len(outcomes) > 1:
        counts = Counter(o.change if o.ok else "failed" for o in outcomes)
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        out.print(f"{len(outcomes)} bots: {summary}", markup=False)


def _warn_unhealthy(rt: Any, only: tuple[str, ...] | None = None) -> None:
    """Say on stderr why the fleet is not ticking, if it is not (engine.health)."""
    from engine.health import fleet_health

    try:
        health = fleet_health(rt)
    except Exception as exc:  # noqa: BLE001 - a warning must not fail the command
        err.print(f"warning: cannot check the fleet's health: {exc}", markup=False)
        return
    for code, reason in health.reasons.items():
        if only is None or code in only:
            err.print(f"warning: {reason}", markup=False, highlight=False, soft_wrap=True)


def _bot_names(targets: list[str]) -> list[str]:
    """Bot names, or the names inside bot files, directories or globs
    (`make stop-bot BOT=bots/x.yaml`)."""
    from engine import bulk
    from engine.yamlsafe import DocumentError, parse_yaml

    names = []
    for target in targets:
        path = Path(target)
        if not (path.is_dir() or path.suffix in bulk.BOT_SUFFIXES or "*" in target):
            names.append(target)
            continue
        try:
            files = bulk.bot_files([target])
        except BotConfigError as exc:
            raise _fail(str(exc)) from None
        for file in files:
            try:
                data = parse_yaml(file.read_text(encoding="utf-8")).data
            except (DocumentError, OSError, UnicodeDecodeError) as exc:
                raise _fail(f"{file}:{getattr(exc, 'line', 1)}: {exc}") from None
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str):
                raise _fail(f"{file}:1: name: missing")
            names.append(name)
    return names


def _lifecycle(
    action: str, targets: list[str] | None, every: bool, labels: list[str] | None
) -> None:
    rt = _runtime()
    outcomes = _apply_stored(rt, action, _bot_names(targets or []), every, labels)
    for o in outcomes:
        if o.ok and not o.drained:
            err.print(f"{o.bot}: a tick was still running at the time limit", markup=False)
    _report(outcomes)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


NameTargets = Annotated[
    list[str] | None,
    typer.Argument(help="Bot names, bot files, directories or globs", show_default=False),
]


@app.command("stop-bot")
def stop_bot(targets: NameTargets = None, every: EveryBot = False, labels: Labels = None) -> None:
    """Stop bots; when this returns they send no further order."""
    _lifecycle("stop", targets, every, labels)


@app.command("pause-bot")
def pause_bot(targets: NameTargets = None, every: EveryBot = False, labels: Labels = None) -> None:
    """Pause bots (resume-bot restarts them with the same config)."""
    _lifecycle("pause", targets, every, labels)


@app.command("resume-bot")
def resume_bot(targets: NameTargets = None, every: EveryBot = False, labels: Labels = None) -> None:
    """Resume paused or errored bots."""
    _lifecycle("resume", targets, every, labels)


def status_table(rows: list[dict[str, Any]]) -> Table:
    """The status table shown by `status` and the demo."""
    table = Table(
        "name",
        "status",
        "gen",
        "interval",
        "last tick",
        "next due",
        "ok",
        "failed",
        "missed",
        "orders",
        "reason",
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            str(r["generation"]),
            f"{r['interval_s']:g}s",
            (r["last_tick_at"] or "-")[11:19],
            (r["next_due_at"] or "-")[11:19],
            str(r["ticks_ok"]),
            str(r["ticks_failed"]),
            str(r["ticks_missed"]),
            str(r["orders"]),
            # Why a bot is in error or paused; a running bot's last error is history.
            (r["last_error"] or "")[:80] if r["status"] in ("error", "paused") else "",
        )
    return table


def _engine() -> Any:
    from engine.db import engine_for, migrate
    from engine.settings import get_settings

    url = get_settings().database_url
    migrate(url)
    return engine_for(url)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False) -> None:
    """Show every bot: status, generation, schedule and counters, and a warning on stderr
    when the fleet is not ticking (no worker reads the tick queue, stalled bots)."""
    with Session(_engine()) as session:
        rows = [bot_summary(b) for b in session.exec(select(Bot).order_by(Bot.name))]
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        out.print(status_table(rows))
    if any(r["status"] == "running" for r in rows):
        _warn_unhealthy(_health_runtime())


def _health_runtime() -> Any:
    """A runtime for the health check; without Redis only the stalled bots are checked."""
    import dataclasses

    from engine.embedded import reachable
    from engine.inprocess import MemoryCoordinator
    from engine.runtime import get_runtime
    from engine.settings import get_settings

    rt = get_runtime()
    if not reachable(get_settings().redis_url):
        err.print("warning: Redis cannot be reached: no bot can tick", markup=False)
        return dataclasses.replace(rt, coordinator=MemoryCoordinator(), redis=None)
    return rt


@app.command()
def ticks(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most recent N ticks")] = 20,
) -> None:
    """List a bot's most recent ticks."""
    with Session(_engine()) as session:
        if session.get(Bot, name) is None:
            raise _fail(f"no bot named {name!r}")
        query = (
            select(Tick).where(Tick.bot == name).order_by(col(Tick.started_at).desc()).limit(limit)
        )
        rows = [tick_row(t) for t in session.exec(query)]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("gen", "slot", "due", "lateness ms", "duration ms", "outcome", "orders", "error")
    for r in rows:
        table.add_row(
            str(r["generation"]),
            str(r["slot"]),
            r["due_at"][11:23],
            f"{r['lateness_ms']:.1f}",
            f"{r['duration_ms']:.1f}",
            r["outcome"],
            str(r["orders"]),
            r["error"] or "",
        )
    out.print(table)


@app.command()
def ping(timeout: float = 10.0) -> None:
    """Send the `ping` task to a worker and print its answer."""
    from engine.embedded import reachable
    from engine.settings import get_settings, redact_url
    from engine.tasks import ping as ping_task

    broker = get_settings().celery_broker_url
    if broker.startswith("redis") and not reachable(broker):
        raise _fail(NO_BROKER.format(url=redact_url(broker)))
    try:
        answer = ping_task.delay().get(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no worker answered"
        raise _fail(f"no worker answered within {timeout:g}s ({type(exc).__name__})") from None
    out.print_json(json.dumps(answer))


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Print (or write) the JSON Schema of bot config files, for editors."""
    from engine.config import config_json_schema

    text = json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to DATABASE_URL."""
    _engine()
    out.print("database is up to date")


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Bot YAML file")],
    takeover: Annotated[
        bool,
        typer.Option(help="Stop the fleet's chain of this bot first (needs Redis), run it here"),
    ] = False,
) -> None:
    """Run one bot in the foreground without broker or Redis (Ctrl-C stops it).

    A bot the fleet runs is refused unless --takeover is given: never two chains."""
    import signal
    import threading

    from engine.config import load_bot_config
    from engine.inprocess import run_foreground
    from engine.logging import configure_logging
    from engine.settings import get_settings

    try:
        config = load_bot_config(file)
    except BotConfigError as exc:
        raise _fail(str(exc)) from None
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ticks_run = run_foreground(config, settings, stop, source=str(file), takeover=takeover)
    err.print(f"{config.name}: stopped after {ticks_run} tick(s)")


@app.command()
def backtest(
    file: Annotated[Path, typer.Argument(help="Bot YAML file")],
    data: Annotated[Path, typer.Option(help="Candles CSV: timestamp,open,high,low,close,volume")],
    start: Annotated[
        str | None, typer.Option("--from", help="First candle (ISO or epoch ms)")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="End, exclusive (ISO or epoch ms)")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder")] = Path("backtest-out"),
) -> None:
    """Run the bot's strategy over historical candles with the paper fill model."""
    import dataclasses

    from rich.progress import Progress

    from engine.backtest import CandleFileError, load_candles_csv, run_backtest, write_report
    from engine.backtest.report import iso
    from engine.config import load_bot_config
    from engine.exchange.fills import FillModel
    from strategies.registry import build

    try:
        config = load_bot_config(file, check_credentials=False)  # a backtest trades nothing
        candles = load_candles_csv(data, start, end)
    except (BotConfigError, CandleFileError) as exc:
        raise _fail(str(exc)) from None
    if not candles:
        raise _fail(f"{data}: no candles in the chosen range")
    strategy = build(config.strategy.name, config.strategy.params)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("backtest", total=len(candles))
        result = run_backtest(
            strategy,
            candles,
            symbol=config.symbol,
            balances=dict(config.paper.balances),
            fill_model=FillModel(fee_rate=config.paper.fee_rate, slippage=config.paper.slippage),
            risk=config.risk,
            offset_ms=round(config.offset * 1000),
            progress=lambda done, total: progress.update(task, completed=done),
            exits=config.exits,
            protections=config.protections,
            order_timeout_s=config.order_timeout,
        )
    metrics = write_report(result, out_dir)
    table = Table("metric", "value", title=f"{config.name} on {len(candles)} candles")
    for key, value in sorted(dataclasses.asdict(metrics).items()):
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    out.print(table)
    if result.exits:
        out.print("exits: " + ", ".join(f"{kind} {n}" for kind, n in result.exits.items()))
    for ts, reason in result.protections:
        out.print(f"paused at {iso(ts)}: {reason} (no trading after)")
    out.print(f"wrote {out_dir}/summary.json, trades.csv, equity.png")


@app.command()
def simulator(
    host: str = "127.0.0.1",
    port: int = 8765,
    seed: int = 42,
    latency_ms: Annotated[float, typer.Option(help="Added to every response")] = 0.0,
    replay: Annotated[
        list[str] | None,
        typer.Option(
            help="SYMBOL=FILE.csv: serve that symbol (exchange id, e.g. BTCUSDT) from recorded "
            "candles at their own times instead of the seeded path (repeatable)"
        ),
    ] = None,
    allow_default_keys: Annotated[
        bool,
        typer.Option(
            help="Serve beyond loopback with the documented default key pair (a private "
            "network only, e.g. a compose stack whose port is published on loopback)"
        ),
    ] = False,
) -> None:
    """Serve the loopback exchange simulator (a Binance spot imitation) until Ctrl-C."""
    from engine.exchange.simulator import run_simulator
    from engine.logging import configure_logging
    from engine.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    replays = {}
    for item in replay or []:
        symbol, sep, path = item.partition("=")
        if not sep or not symbol or not path:
            raise _fail(f"--replay {item!r}: expected SYMBOL=FILE.csv")
        from engine.backtest import CandleFileError, load_candles_csv

        try:
            candles = load_candles_csv(Path(path))
        except CandleFileError as exc:
            raise _fail(str(exc)) from None
        replays[symbol] = [(c.ts, c.open, c.high, c.low, c.close, c.volume) for c in candles]
    run_simulator(
        host=host,
        port=port,
        seed=seed,
        latency_ms=latency_ms or None,
        api_key=settings.simulator_api_key,
        api_secret=settings.simulator_api_secret.get_secret_value(),
        admin_token=(
            settings.simulator_admin_token.get_secret_value()
            if settings.simulator_admin_token
            else None
        ),
        allow_default_keys=allow_default_keys,
        replay=replays,
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Default: API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: API_PORT")] = None,
) -> None:
    """Serve the HTTP control API (refuses a non-loopback host without API_TOKEN)."""
    from engine.api import serve
    from engine.settings import get_settings

    settings = get_settings()
    serve(host or settings.api_host, port or settings.api_port)


@app.command()
def telegram(
    standby: Annotated[bool, typer.Option(help="Wait while another poller runs")] = False,
) -> None:
    """Answer /status, /bot, /stop, /pause, /resume from TELEGRAM_CHAT_IDS (one per fleet)."""
    from engine.telegram import serve

    try:
        serve(standby=standby)
    except BotEngineError as exc:
        raise _fail(str(exc)) from None


@app.command()
def flower(
    port: int = 5555,
    address: Annotated[str, typer.Option(help="Listen address (0.0.0.0 in a container)")] = (
        "127.0.0.1"
    ),
) -> None:
    """Start Flower with basic auth from FLOWER_USER / FLOWER_PASSWORD, logging JSON lines."""
    import os

    from celery.bin.celery import main as celery_main

    from engine.logging import configure_logging, register_secrets
    from engine.settings import get_settings

    settings = get_settings()
    if settings.flower_password is None:
        raise _fail("set FLOWER_PASSWORD (and FLOWER_USER) first: Flower can stop workers")
    user, password = settings.flower_user, settings.flower_password.get_secret_value()
    if "," in user or "," in password:
        # Flower splits FLOWER_BASIC_AUTH on "," into several user:password pairs.
        raise _fail("FLOWER_USER and FLOWER_PASSWORD must not contain ',' (Flower splits on it)")
    # Flower reads every option from FLOWER_<OPTION> too. The environment, unlike a
    # `--basic-auth=user:password` argument, is not world-readable in /proc/PID/cmdline.
    os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    # Flower runs in this process, after the engine's logging: Celery's `flower` command
    # never sends `setup_logging`, and tornado adds its plain-text handler only to a root
    # logger that has none, so every Flower and tornado line comes out as JSON.
    configure_logging(settings.log_level, settings.log_format)
    register_secrets(settings.secret_values())
    sys.argv = [
        "celery",
        "-A",
        "engine.celery_app",
        "flower",
        f"--address={address}",
        f"--port={port}",
        f"--logging={settings.log_level.lower()}",
    ]
    sys.exit(celery_main())


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(help="Stop after N seconds")] = None,
    bots: Annotated[list[Path] | None, typer.Option("--bot", help="Bot files")] = None,
    workdir: Annotated[Path, typer.Option(help="Logs and database")] = Path("demo-run"),
) -> None:
    """Everything embedded: Redis, simulator, worker, beat, API and the example bots."""
    from engine.demo import run_demo

    files = bots or sorted(Path("bots").glob("*.yaml"))
    if not files:
        raise _fail("no bot files: pass --bot FILE or run from the repository root")
    raise typer.Exit(run_demo(files, duration, workdir))


def main() -> None:
    """Console-script entry point: expected errors become one line, not a traceback."""
    try:
        app()
    except BrokerUnavailableError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except BotEngineError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
