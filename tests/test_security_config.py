"""Attacks on bot configs (issue #24), through the real code paths: the HTTP API (the
real app on a real Redis and database), the file loader, and the gateway factory as a
tick calls it. Each test is one finding of the audit, replayed."""

from __future__ import annotations

import base64
import http.server
import json
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import load_bot_config, parse_bot_config
from engine.db import session_scope
from engine.errors import BotConfigError, ExchangeError, OperationalError
from engine.exchange.clients import ClientSpec, build_exchange, clear_clients
from engine.models import Bot
from engine.runtime import Runtime
from engine.settings import Settings
from engine.tick import bot_setup
from engine.yamlsafe import DocumentError, parse_yaml
from tests.chain_support import bot_yaml
from tests.test_api import AUTH, JSON, YAML, _client, _runtime

# -- helpers ----------------------------------------------------------------------------


@dataclass
class Listener:
    """A loopback HTTP server that records every request it receives (and answers 404)."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def listener(redirect_to: str | None = None) -> Iterator[Listener]:
    """A recording listener on 127.0.0.1 (a port no allow-list in these tests names),
    answering 404, or 302 to `redirect_to`."""
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
            self.send_response(404 if redirect_to is None else 302)
            if redirect_to is not None:
                self.send_header("Location", redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_DELETE = do_PUT = _record  # noqa: N815 - http.server names

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Listener(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SecApi:
    """The real API app on a runtime whose outbound policy allows only the simulator."""

    client: Any
    rt: Runtime

    def put(self, name: str, text: str, headers: dict[str, str] = YAML) -> httpx.Response:
        response: httpx.Response = self.client.put(
            f"/api/v1/bots/{name}", content=text, headers=headers
        )
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.get(f"/api/v1{path}", headers=AUTH, **kwargs)
        return response


@pytest.fixture
def api(redis_url: str, db_url: str, sim: Any) -> Iterator[SecApi]:
    rt = _runtime(redis_url, db_url, allowed_base_urls=[sim.url], simulator_url=sim.url)
    client, _ = _client(rt, redis_url)
    with client:
        yield SecApi(client, rt)


def _fields(response: httpx.Response) -> list[tuple[str, str]]:
    return [(f["field"], f["message"]) for f in response.json()["error"]["fields"]]


def _live_binance(name: str, extra: str) -> str:
    return (
        f"name: {name}\nexchange: binance\nmode: live\nsymbol: BTC/USDT\n"
        "strategy:\n  name: dca\n  params: {quote_amount: 10}\n" + extra
    )


def _store(rt: Runtime, name: str, config: dict[str, Any]) -> None:
    """A config written to the database directly, as one stored before these rules."""
    with session_scope(rt.db) as session:
        session.add(Bot(name=name, config=config, config_hash="x" * 64, source=f"api:{name}"))


def _stored(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "exchange": "binance",
        "mode": "live",
        "symbol": "BTC/USDT",
        "strategy": {"name": "dca", "params": {"quote_amount": 10}},
        **changes,
    }


# -- 1. strategy import bypass ----------------------------------------------------------


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module `sec_evil_mod` that leaves a marker file when imported."""
    marker = tmp_path / "imported"
    (tmp_path / "sec_evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom strategies.dca import Dca as X\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sec_evil_mod", raising=False)
    return marker


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (bot_yaml("x", strategy=f"!!binary {_b64('sec_evil_mod:X')}", params=""), "strategy.name"),
        (
            bot_yaml("x", strategy=f"!!binary {_b64('strategies.dca:Dca')}", params=""),
            "strategy.name",
        ),
        (bot_yaml("x").replace("name: x", f"name: !!binary {_b64('x')}"), "name"),
        (bot_yaml("x", strategy="!!str sec_evil_mod:X", params=""), "strategy.name"),
        (bot_yaml("x", strategy="!!python/name:os.system", params=""), "strategy.name"),
    ],
    ids=["binary-evil-module", "binary-dotted-builtin", "binary-name", "str-tag", "python-tag"],
)
def test_tagged_values_are_refused_and_nothing_is_imported(
    api: SecApi, evil_module: Path, text: str, field: str
) -> None:
    # When a config with a YAML tag is PUT
    response = api.put("x", text)
    # Then it is a field error on the tagged value, nothing is stored and nothing ran
    assert response.status_code == 422, response.text
    assert [(f, m) for f, m in _fields(response) if "tags" in m] != []
    assert field in [f for f, _ in _fields(response)]
    assert api.get("/bots/x").status_code == 404
    assert not evil_module.exists()
    assert "sec_evil_mod" not in sys.modules


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_dotted_paths_over_the_api_never_import(api: SecApi, evil_module: Path, fmt: str) -> None:
    # Given a config naming a custom strategy by dotted path, as YAML or JSON
    text = bot_yaml("y", strategy="sec_evil_mod:X", params="quote_amount: 10")
    body = json.dumps(yaml.safe_load(text)) if fmt == "json" else text
    # When it is PUT
    response = api.put("y", body, headers=JSON if fmt == "json" else YAML)
    # Then it is refused on strategy.name and the module never ran
    assert response.status_code == 422
    assert "strategy.name" in [f for f, _ in _fields(response)]
    assert not evil_module.exists()
    # And the API's parse path refuses it without importing, even when valid otherwise
    with pytest.raises(BotConfigError, match="only registered strategies"):
        parse_bot_config(text, "api:y", allow_custom=False)
    assert not evil_module.exists()


def test_the_name_check_runs_on_the_validated_name(api: SecApi) -> None:
    # Given a body whose name differs from the URL's
    response = api.put("alpha", bot_yaml("beta"))
    # Then it is refused on `name`
    assert response.status_code == 422
    assert [f for f, _ in _fields(response)] == ["name"]


# -- 2. secret exfiltration and signed SSRF ---------------------------------------------


def test_a_config_cannot_name_engine_settings_as_credentials(api: SecApi) -> None:
    with listener() as sink:
        # Given the audit's config: the API token as key, sent to a listener
        text = _live_binance(
            "exfil",
            "credentials: {api_key_env: API_TOKEN, secret_env: REDIS_URL}\n"
            f"base_url: {sink.url}\n",
        )
        # When it is PUT
        response = api.put("exfil", text)
        # Then both the old credentials form and the base URL are refused, nothing stored
        assert response.status_code == 422
        fields = dict(_fields(response))
        assert "credentials: binance-main" in fields["credentials"]
        assert "ALLOWED_BASE_URLS" in fields["base_url"]
        assert api.get("/bots/exfil").status_code == 404
        # And the listener heard nothing
        assert sink.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1@evil.example",
        "http://evil.example#@127.0.0.1",
        "http://evil.example\\@127.0.0.1",
        "http://[::1%25eth0]:8765",
        "http://2130706433:8765",
        "http://0x7f000001:8765",
        "http://0x7f.0.0.1:8765",
        "http://127.1:8765",
        "http://017700000001:8765",
        "http://127.0.0.1.:8765",
        "http://localhost.:8765",
        "http://user:pw@127.0.0.1:8765",
        "http://127.0.0.1:8765?x=1",
        "https://ev\u0131l.example",
        "file:///etc/passwd",
        "http://[::ffff:169.254.169.254]/",
    ],
)
def test_base_url_tricks_are_refused(api: SecApi, url: str) -> None:
    text = bot_yaml("ssrf") + f"base_url: {json.dumps(url)}\n"
    response = api.put("ssrf", text)
    assert response.status_code == 422, response.text
    assert "base_url" in [f for f, _ in _fields(response)]


def test_only_the_allowed_origin_is_accepted(api: SecApi, sim: Any) -> None:
    # Given an allow-list naming exactly the simulator's origin
    with listener() as sink:
        # Then the simulator's origin is accepted, and another loopback port is not
        assert api.put("ok", bot_yaml("ok") + f"base_url: {sim.url}/\n").status_code == 201
        refused = api.put("ko", bot_yaml("ko") + f"base_url: {sink.url}\n")
        assert refused.status_code == 422
        assert sink.requests == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"verbose": True}, "exchange_options.verbose"),
        ({"httpProxy": "http://127.0.0.1:9"}, "exchange_options.httpProxy"),
        ({"https_proxy": "http://127.0.0.1:9"}, "exchange_options.https_proxy"),
        ({"proxies": {"http": "x"}}, "exchange_options.proxies"),
        ({"urls": {"api": {"public": "http://127.0.0.1:9"}}}, "exchange_options.urls"),
        ({"headers": {"X-A": "b"}}, "exchange_options.headers"),
        ({"apiKey": "AKIAXXXXXXXX", "secret": "s3cr3t"}, "exchange_options.apiKey"),
        ({"options": {"hostname": "evil.example"}}, "exchange_options.options.hostname"),
        ({"options": {"proxyUrl": "x"}}, "exchange_options.options.proxyUrl"),
        ({"options": {"a": {"b": "https://evil.example"}}}, "exchange_options.options.a.b"),
        ({"options": {"ws": {"x": 1}}}, "exchange_options.options.ws"),
        (
            {"options": {"deep": [{"privateKey": "k"}]}},
            "exchange_options.options.deep.0.privateKey",
        ),
        ({"timeout": 10**9}, "exchange_options.timeout"),
    ],
)
def test_exchange_options_that_redirect_or_leak_are_refused(
    api: SecApi, options: dict[str, Any], field: str
) -> None:
    text = bot_yaml("opts") + "exchange_options: " + json.dumps(options) + "\n"
    response = api.put("opts", text)
    assert response.status_code == 422, response.text
    assert field in [f for f, _ in _fields(response)]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("api_key: abc\n", "api_key"),
        ("paper: {balances: {USDT: 5}, secret: x}\n", "paper.secret"),
        ("credentials: {apiKey: x}\n", "credentials.apiKey"),
        ("risk: {passphrase: x}\n", "risk.passphrase"),
        ("exchange_options: {options: {uid: '123'}}\n", "exchange_options.options.uid"),
    ],
)
def test_inline_secrets_are_refused_at_any_depth(extra: str, field: str) -> None:
    with pytest.raises(BotConfigError) as info:
        parse_bot_config(
            bot_yaml("sec").replace("paper:\n  balances: {USDT: 1000000}\n", "") + extra, "f.yaml"
        )
    assert any(f": {field}: inline secrets are not allowed" in p for p in info.value.problems), (
        info.value.problems
    )


def test_the_operator_may_allow_more_exchange_options() -> None:
    text = bot_yaml("hdr") + "exchange_options: {headers: {X-Client: botengine}}\n"
    with pytest.raises(BotConfigError, match=r"exchange_options\.headers"):
        parse_bot_config(text, "f.yaml", settings=Settings(_env_file=None))
    allowed = Settings(_env_file=None, allowed_exchange_options=["headers"])
    assert parse_bot_config(text, "f.yaml", settings=allowed).exchange_options["headers"]


def test_the_file_loader_applies_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "exfil.yaml"
    path.write_text(
        _live_binance(
            "exfil",
            "credentials: {api_key_env: API_TOKEN, secret_env: REDIS_URL}\n"
            "base_url: http://169.254.169.254/\nexchange_options: {verbose: true}\n",
        )
    )
    with pytest.raises(BotConfigError) as info:
        load_bot_config(path, settings=Settings(_env_file=None))
    fields = {p.split(": ")[1] for p in info.value.problems}
    assert fields == {"credentials", "base_url", "exchange_options.verbose"}


@pytest.mark.parametrize(
    "changes",
    [
        {"credentials": {"api_key_env": "API_TOKEN", "secret_env": "REDIS_URL"}},
        {"credentials": "f2-main", "base_url": "LISTENER"},
        {"credentials": "f2-main", "exchange_options": {"httpProxy": "LISTENER"}},
        {"credentials": "f2-main", "exchange_options": {"urls": {"api": "LISTENER"}}},
        {"credentials": "f2-main", "exchange_options": {"verbose": True}},
        {"exchange": "simulator", "exchange_options": {"apiKey": "x", "secret": "y"}},
    ],
    ids=["legacy-credentials", "base-url", "proxy", "urls", "verbose", "inline-keys"],
)
def test_configs_stored_before_the_rules_cannot_bypass_them(
    redis_url: str,
    db_url: str,
    sim: Any,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
) -> None:
    monkeypatch.setenv("BOTENGINE_CRED_F2_MAIN_KEY", "simulator-key")
    monkeypatch.setenv("BOTENGINE_CRED_F2_MAIN_SECRET", "simulator-secret")
    rt = _runtime(redis_url, db_url, allowed_base_urls=[sim.url], simulator_url=sim.url)
    clear_clients()
    with listener() as sink:
        # Given a stored config (as written before these rules) aiming at the listener
        text = json.dumps(_stored("old", **changes)).replace("LISTENER", sink.url)
        _store(rt, "old", json.loads(text))
        # When a tick builds its gateway
        with pytest.raises(OperationalError):
            bot_setup(rt, "old", 0)
        # Then the bot cannot trade (the tick moves it to error) and nothing was sent
        assert sink.requests == []


def test_an_allowed_base_url_gets_the_declared_key_and_nothing_else(
    redis_url: str, db_url: str, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Control: were the listener allowed, it would receive the declared key only
    monkeypatch.setenv("BOTENGINE_CRED_F3_MAIN_KEY", "declared-key-0123")
    monkeypatch.setenv("BOTENGINE_CRED_F3_MAIN_SECRET", "declared-secret-0123")
    clear_clients()
    with listener() as sink:
        rt = _runtime(redis_url, db_url, allowed_base_urls=[sink.url])
        _store(rt, "ctl", _stored("ctl", credentials="f3-main", base_url=sink.url))
        gateway = bot_setup(rt, "ctl", 0).gateway
        with pytest.raises(ExchangeError):  # the listener answers 404 to everything
            gateway.fetch_balances()
        # requests do flow to an allowed origin (so the refusals above are the policy's)
        assert sink.requests
        keys = {r["headers"].get("X-MBX-APIKEY") for r in sink.requests} - {None}
        assert keys <= {"declared-key-0123"}
        assert rt.settings.api_token is not None
        assert all(
            rt.settings.api_token.get_secret_value() not in json.dumps(r) for r in sink.requests
        )


def test_an_allowed_origin_cannot_redirect_signed_requests_elsewhere(
    redis_url: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an allowed origin that redirects every request to another listener
    monkeypatch.setenv("BOTENGINE_CRED_F4_MAIN_KEY", "declared-key-4567")
    monkeypatch.setenv("BOTENGINE_CRED_F4_MAIN_SECRET", "declared-secret-4567")
    clear_clients()
    with listener() as sink, listener(redirect_to=sink.url) as hop:
        rt = _runtime(redis_url, db_url, allowed_base_urls=[hop.url])
        _store(rt, "hop", _stored("hop", credentials="f4-main", base_url=hop.url))
        gateway = bot_setup(rt, "hop", 0).gateway
        # When the bot reads its balances, the redirect is not followed
        with pytest.raises(ExchangeError):
            gateway.fetch_balances()
        assert hop.requests
        assert sink.requests == []


def test_stored_inline_secrets_are_masked_in_the_bot_detail(api: SecApi) -> None:
    # Given a config stored before inline secrets were refused
    stored = _stored("leaky", exchange="simulator", mode="paper")
    stored["exchange_options"] = {"apiKey": "AKIA-LEAK", "options": {"secret": "S-LEAK"}}
    _store(api.rt, "leaky", stored)
    # When it is read back over the API, the values are masked
    body = api.get("/bots/leaky").text
    assert "AKIA-LEAK" not in body
    assert "S-LEAK" not in body
    assert api.get("/bots/leaky").json()["config"]["exchange_options"]["apiKey"] == "***"


def test_every_ccxt_client_is_built_quiet() -> None:
    exchange = build_exchange(ClientSpec("binance", options={"verbose": True}))
    assert exchange.verbose is False
    with pytest.raises(OperationalError, match="credential set"):
        build_exchange(ClientSpec("binance", options={"apiKey": "x", "secret": "y"}))


def test_no_setting_lives_under_the_credentials_prefix() -> None:
    # A credential set can never alias an engine setting.
    assert not [f for f in Settings.model_fields if f.upper().startswith("BOTENGINE_CRED_")]


# -- issue #25: undeclared credential sets fail validation ------------------------------


def test_validate_names_an_undeclared_set_and_its_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BOTENGINE_CRED_KRAKEN_MAIN_KEY", raising=False)
    monkeypatch.delenv("BOTENGINE_CRED_KRAKEN_MAIN_SECRET", raising=False)
    path = tmp_path / "live.yaml"
    path.write_text(_live_binance("live", "credentials: kraken-main\n"))
    with pytest.raises(BotConfigError) as info:
        load_bot_config(path, settings=Settings(_env_file=None))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:8: credentials: credential set 'kraken-main' is not")
    assert "BOTENGINE_CRED_KRAKEN_MAIN_KEY" in problem
    assert "BOTENGINE_CRED_KRAKEN_MAIN_SECRET" in problem
    # And once declared, it validates
    monkeypatch.setenv("BOTENGINE_CRED_KRAKEN_MAIN_KEY", "k" * 16)
    monkeypatch.setenv("BOTENGINE_CRED_KRAKEN_MAIN_SECRET", "s" * 16)
    assert load_bot_config(path, settings=Settings(_env_file=None)).credentials == "kraken-main"


# -- 3. alias bombs, deep documents, duplicates, numbers --------------------------------


def alias_bomb(levels: int = 7, fan: int = 10) -> str:
    """The audit's shape: `levels` levels of `fan` aliases each under exchange_options."""
    rows = ["exchange_options:", "  l0: &l0 [" + ",".join(["x"] * fan) + "]"]
    for i in range(1, levels):
        rows.append(f"  l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * fan) + "]")
    return bot_yaml("bomb") + "\n".join(rows) + "\n"


def _measure(fn: Any) -> tuple[float, float, Any]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return elapsed, peak / 2**20, result


def test_an_alias_bomb_is_refused_before_any_expansion(api: SecApi, tmp_path: Path) -> None:
    text = alias_bomb()
    assert len(text) < 600
    # Through the file loader
    path = tmp_path / "bomb.yaml"
    path.write_text(text)

    def load() -> str:
        with pytest.raises(BotConfigError) as info:
            load_bot_config(path)
        return str(info.value)

    elapsed, peak_mb, message = _measure(load)
    assert "aliases (*l0) are not allowed" in message or "anchors (&l0)" in message
    # Through the API, with the process's RSS watched
    process = psutil.Process()
    rss_before = process.memory_info().rss
    start = time.perf_counter()
    response = api.put("bomb", text)
    api_elapsed = time.perf_counter() - start
    rss_growth_mb = (process.memory_info().rss - rss_before) / 2**20
    print(
        f"\nalias bomb ({len(text)} B): loader refused in {elapsed * 1000:.2f} ms,"
        f" peak {peak_mb:.3f} MiB traced; API 422 in {api_elapsed * 1000:.1f} ms,"
        f" RSS +{rss_growth_mb:.1f} MiB"
    )
    assert response.status_code == 422
    assert "exchange_options.l0" in [f for f, _ in _fields(response)]
    assert api.get("/bots/bomb").status_code == 404
    assert elapsed < 1.0
    assert api_elapsed < 1.0
    assert peak_mb < 20


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("a: &a [*a]\n", "a", "anchors (&a) are not allowed"),
        ("[" * 30_000, "", "nested too deeply"),
        ("".join(f"{'  ' * i}k{i}:\n" for i in range(200)), "k0", "nested too deeply"),
        ("x: 1\n" * 20_000, "(file)", "too large"),
        ("mode: live\nmode: paper\n", "mode", "duplicate key (first at line 1)"),
        ("a: 1\n---\na: 2\n", "(file)", "one document per file"),
    ],
    ids=["recursive-alias", "deep-flow", "deep-block", "too-large", "duplicate", "two-docs"],
)
def test_hostile_documents_are_field_errors_not_crashes(
    api: SecApi, text: str, field: str, message: str
) -> None:
    elapsed, _, _ = _measure(lambda: api.put("hostile", text))
    response = api.put("hostile", text)
    assert response.status_code == 422, response.text
    fields = _fields(response)
    assert any(f.startswith(field) and message in m for f, m in fields), fields
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"name": "j", "name": "j"}', "duplicate key"),
        ('{"name": NaN}', "NaN is not allowed"),
        ('{"name": 1e999}', "numbers must be finite"),
        ('{"name": -Infinity}', "Infinity is not allowed"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('{"n": ' + "9" * 5000 + "}", "invalid JSON"),
        ('{"n": "' + "a" * 5000 + '"}', "value too long"),
    ],
    ids=["duplicate", "nan", "overflow", "infinity", "deep", "huge-int", "long-string"],
)
def test_json_bodies_are_held_to_the_same_rules(api: SecApi, body: str, message: str) -> None:
    response = api.put("j", body, headers=JSON)
    assert response.status_code == 422, response.text
    assert message in response.text


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("quote_amount: 20", "quote_amount: .inf", "strategy.params.quote_amount"),
        ("quote_amount: 20", "quote_amount: 1.0e308", "strategy.params.quote_amount"),
        ("quote_amount: 20", "quote_amount: 1e400", "strategy.params.quote_amount"),
        ("USDT: 1000000", "USDT: 1.0e300", "paper.balances.USDT"),
        ("USDT: 1000000", "USDT: .nan", "paper.balances.USDT"),
    ],
)
def test_amounts_are_finite_and_bounded(old: str, new: str, field: str) -> None:
    text = bot_yaml("num").replace(old, new)
    with pytest.raises(BotConfigError) as info:
        parse_bot_config(text, "f.yaml")
    assert any(f": {field}: " in p for p in info.value.problems), info.value.problems


def test_risk_limits_are_finite_and_bounded() -> None:
    for limit in (
        "max_position: .inf",
        "max_order_quote: 1.0e308",
        "max_orders_per_tick: 10000000",
    ):
        with pytest.raises(BotConfigError, match=r"risk\."):
            parse_bot_config(bot_yaml("r") + f"risk: {{{limit}}}\n", "f.yaml")


# -- 7. page cursors ----------------------------------------------------------------------


@pytest.mark.parametrize("param", ["before_slot", "generation"])
def test_cursors_beyond_the_columns_are_422(api: SecApi, param: str) -> None:
    api.put("cur", bot_yaml("cur"))
    for beyond in (2**31, 2**64):
        response = api.get("/bots/cur/ticks", params={param: beyond})
        assert response.status_code == 422
        assert response.json()["error"]["fields"][0]["field"] == param
    assert api.get("/bots/cur/ticks", params={param: 2**31 - 1}).status_code == 200


# -- the loader against PyYAML: same data where both accept, clean errors elsewhere -------

plain = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63) + 1, 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain)
def test_plain_documents_read_as_pyyaml_reads_them(data: Any) -> None:
    text = yaml.safe_dump(data)
    assert parse_yaml(text).data == yaml.safe_load(text)


@settings(max_examples=200, deadline=None)
@given(plain, st.sampled_from(["&a ", "*a ", "!!binary ", "!x ", "? [k]\n: ", "&b [*b]"]))
def test_hostile_fragments_fail_cleanly(data: Any, fragment: str) -> None:
    text = fragment + yaml.safe_dump(data)
    try:
        parse_yaml(text)
    except DocumentError as exc:
        assert exc.line >= 1
        assert exc.message
