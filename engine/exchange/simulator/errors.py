"""Binance-shaped API errors: what the simulator answers when it refuses a request.

The codes and messages are copied from Binance's spot API so that the unmodified
ccxt ``binance`` class maps them to the same exception classes as in production
(``-2010`` + the balance message -> InsufficientFunds, ``-1121`` -> BadSymbol, ...).
"""

from __future__ import annotations


class ApiError(Exception):
    """Raised when a request is refused; rendered as ``{"code": ..., "msg": ...}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg

    def body(self) -> dict[str, object]:
        """The JSON body Binance sends for this error."""
        return {"code": self.code, "msg": self.msg}


def invalid_symbol() -> ApiError:
    """Unknown or malformed ``symbol`` (ccxt: BadSymbol)."""
    return ApiError(400, -1121, "Invalid symbol.")


def insufficient_balance() -> ApiError:
    """The free balance cannot pay for the order (ccxt: InsufficientFunds)."""
    return ApiError(400, -2010, "Account has insufficient balance for requested action.")


def duplicate_order() -> ApiError:
    """The ``newClientOrderId`` is already used by this account (ccxt: InvalidOrder)."""
    return ApiError(400, -2010, "Duplicate order sent.")


def would_match() -> ApiError:
    """A LIMIT_MAKER order would take liquidity (ccxt: OrderImmediatelyFillable)."""
    return ApiError(400, -2010, "Order would immediately match and take.")


def order_not_found() -> ApiError:
    """Query of an order this account does not have (ccxt: OrderNotFound)."""
    return ApiError(400, -2013, "Order does not exist.")


def unknown_order() -> ApiError:
    """Cancel of an order that is unknown or no longer open (ccxt: OrderNotFound)."""
    return ApiError(400, -2011, "Unknown order sent.")


def invalid_api_key() -> ApiError:
    """Missing or unknown ``X-MBX-APIKEY`` (ccxt: AuthenticationError)."""
    return ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")


def bad_signature() -> ApiError:
    """HMAC mismatch (ccxt: AuthenticationError)."""
    return ApiError(400, -1022, "Signature for this request is not valid.")


def outside_recv_window() -> ApiError:
    """``timestamp`` too old for ``recvWindow`` (ccxt: InvalidNonce)."""
    return ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")


def ahead_of_server() -> ApiError:
    """``timestamp`` more than 1 s in the server's future (ccxt: InvalidNonce)."""
    return ApiError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")


def missing_param(name: str) -> ApiError:
    """A mandatory parameter is absent or empty (ccxt: BadRequest)."""
    return ApiError(
        400,
        -1102,
        f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
    )


def bad_param(name: str) -> ApiError:
    """A parameter has an unusable value (ccxt: BadRequest)."""
    return ApiError(400, -1100, f"Illegal characters found in parameter '{name}'.")


def filter_failure(name: str) -> ApiError:
    """An exchangeInfo filter rejects the order (ccxt: InvalidOrder / BadRequest)."""
    return ApiError(400, -1013, f"Filter failure: {name}")


def invalid_interval() -> ApiError:
    """Unsupported kline interval (ccxt: BadRequest)."""
    return ApiError(400, -1120, "Invalid interval.")
