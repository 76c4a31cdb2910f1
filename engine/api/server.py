"""`serve`: run the API under uvicorn, logging through the engine's JSON logging."""

from __future__ import annotations

from engine.api.gate import is_loopback
from engine.errors import ConfigError


def serve(host: str, port: int) -> None:
    """Serve `engine.api:app` on host:port until interrupted.

    Refuses (ConfigError) to listen anywhere but loopback without API_TOKEN: the API
    starts and stops bots that trade real money.
    """
    import uvicorn

    from engine.logging import configure_logging, register_secrets
    from engine.settings import get_settings

    settings = get_settings()
    if settings.api_token is None and not is_loopback(host):
        raise ConfigError(
            f"API_TOKEN is not set: refusing to serve the API on {host}; set API_TOKEN, "
            "or bind to 127.0.0.1 (API_HOST)"
        )
    configure_logging(settings.log_level, settings.log_format)
    register_secrets(settings.secret_values())
    # log_config=None: uvicorn keeps its hands off logging, so its records (access log
    # included) reach the root handler installed above and come out as JSON lines.
    uvicorn.run(
        "engine.api:app",
        host=host,
        port=port,
        log_config=None,
        access_log=True,
        proxy_headers=False,
        server_header=False,
        # SIGTERM ends the server within this, even with requests still hanging on.
        timeout_graceful_shutdown=10,
    )
