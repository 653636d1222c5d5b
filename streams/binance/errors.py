"""The stream side's exception hierarchy, and the one function that decides whether to retry."""

from __future__ import annotations

from streams.binance.backoff import Backoff


class StreamError(Exception):
    """Base of every error the Binance client raises."""


class ParseError(StreamError):
    """A frame that is not a well-formed event we understand (the only error the parser raises)."""

    def __init__(self, reason: str, frame: str | bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frame = frame


class InvalidStreamName(StreamError, ValueError):
    """A symbol or channel that does not make a valid Binance stream name."""


class ConnectionLost(StreamError):
    """The WebSocket connection ended (dropped, closed by the server, or never opened)."""


class HandshakeRejected(StreamError):
    """The exchange refused the WebSocket handshake with a 4xx (an invalid stream name, say): not retried."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"handshake refused with HTTP {status}: {body}")
        self.status = status


class SilentConnection(ConnectionLost):
    """The socket is open but nothing arrives, not even the answer to a probe (spec: treat as dead)."""


class RestError(StreamError):
    """An error answer from the REST API."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class RateLimited(RestError):
    """HTTP 429: the request weight limit is exceeded; back off for Retry-After seconds."""

    def __init__(self, status: int, message: str, retry_after: float) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class IpBanned(RateLimited):
    """HTTP 418: the IP is banned for Retry-After seconds after ignoring 429s."""


class ExchangeUnavailable(RestError):
    """A 5xx answer or a network failure: the exchange's state is unknown, try again later."""


class UnknownSymbol(StreamError, ValueError):
    """A symbol that the exchange does not list (exchangeInfo answers -1121), or that does not trade."""

    def __init__(self, symbol: str, detail: str = "not listed on the exchange") -> None:
        super().__init__(f"unknown symbol {symbol!r}: {detail}")
        self.symbol = symbol


def is_retryable(exc: BaseException) -> bool:
    """Connection troubles, 5xx, answers that are not what the API returns (a proxy's page), 429s."""
    return isinstance(exc, (ConnectionLost, ExchangeUnavailable, RateLimited, OSError, TimeoutError))


def retry_delay(exc: BaseException, backoff: Backoff, *, max_wait: float) -> float | None:
    """Seconds to wait before retrying after `exc`, or None to give up.

    The one place that decides "retry or give up" for the exchange (websockets' process_exception is
    the model): connection troubles and 5xx are retried on the caller's `backoff` until it is
    exhausted; 429/418 wait what the exchange asks (Retry-After) unless that is longer than
    `max_wait`; anything else (a bad request, an unknown symbol, a bug) is not retried.
    """
    if isinstance(exc, RateLimited):
        return exc.retry_after if exc.retry_after <= max_wait else None
    if not is_retryable(exc) or backoff.exhausted:
        return None
    return backoff.next_delay()
