"""Every error that can reach a handler, classified in one place: retry it, refuse the data, or stop loudly.

The exchange's errors are classified by the pure core (`streams.binance.errors.retry_delay`); this module
adds the database (psycopg's own classes, and Django's wrappers of them) and Redis, and is what every
retry loop outside the core asks (one function decides, nothing else does: docs/design.md, "Why errors are
classified in one place").

- TRANSIENT: the service on the other side is away or busy (a restart, a failover, a full disk, a
  dropped connection): keep the data, retry with the one backoff policy, say so in the status.
- CONTENT: the database refused this data (a value out of range, a check constraint): retrying cannot
  help; isolate the refused rows, dead-letter them with the reason, store the rest.
- FATAL: a bug or a configuration error (a missing table, bad credentials, a wrong command): stop
  loudly with the traceback instead of retrying for ever.
"""

from __future__ import annotations

import enum
import logging

import psycopg
import redis.exceptions
from django.db import utils as django_db

from streams.binance.errors import StreamError
from streams.binance.errors import is_retryable as exchange_retryable

logger = logging.getLogger(__name__)


class Failure(enum.Enum):
    TRANSIENT = "transient"
    CONTENT = "content"
    FATAL = "fatal"


# PostgreSQL's SQLSTATE classes (Appendix A of its manual): the first two characters.
_SQLSTATE_TRANSIENT = {
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "55",  # object not in prerequisite state: lock not available
    "57",  # operator intervention: admin shutdown, crash shutdown, cannot connect now, query canceled
    "58",  # system error: I/O error
}
_SQLSTATE_CONTENT = {"22", "23"}  # data exception (out of range, bad text), integrity constraint violation
# 25006 read_only_sql_transaction is a failover to a replica; 25P02 a transaction aborted by an earlier
# error on this connection (the connection is reset before the retry). Both pass; the rest of class 25 is a bug.
_SQLSTATE_TRANSIENT_CODES = {"25006", "25P02", "XX000"}

# Redis: a reply that says "try later" is transient; AuthenticationError and NoPermission are configuration.
_REDIS_TRANSIENT_PREFIXES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "OOM", "CLUSTERDOWN")
_REDIS_TRANSIENT_REPLIES = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
                            redis.exceptions.TryAgainError, redis.exceptions.MasterDownError,
                            redis.exceptions.ClusterDownError)


def classify(exc: BaseException) -> Failure:
    """How to treat `exc`: TRANSIENT, CONTENT or FATAL (see the module docstring)."""
    if isinstance(exc, StreamError):
        return Failure.TRANSIENT if exchange_retryable(exc) else Failure.FATAL
    database = _database_error(exc)
    if database is not None:
        return _classify_database(database)
    if isinstance(exc, redis.exceptions.RedisError):
        return _classify_redis(exc)
    if isinstance(exc, (OSError, TimeoutError)):  # sockets, DNS, connection resets of any client
        return Failure.TRANSIENT
    return Failure.FATAL


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Failure.TRANSIENT


def describe(exc: BaseException) -> str:
    """`ClassName: message` on one line (the database's own class when Django wrapped it)."""
    cause = _database_error(exc) or exc
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}"[:300] if text else type(cause).__name__


def _database_error(exc: BaseException) -> BaseException | None:
    """The psycopg error behind `exc` (Django wraps them in its own classes), or a Django DB error."""
    if isinstance(exc, psycopg.Error):
        return exc
    if isinstance(exc, django_db.Error):
        return exc.__cause__ if isinstance(exc.__cause__, psycopg.Error) else exc
    return None


def _classify_database(exc: BaseException) -> Failure:
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate in _SQLSTATE_TRANSIENT_CODES or sqlstate[:2] in _SQLSTATE_TRANSIENT:
            return Failure.TRANSIENT
        if sqlstate[:2] in _SQLSTATE_CONTENT:
            return Failure.CONTENT
        return Failure.FATAL
    # No SQLSTATE: raised by the client library itself (a refused connection, a closed one) or by SQLite.
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, django_db.OperationalError,
                        django_db.InterfaceError)):
        return Failure.TRANSIENT
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, django_db.DataError, django_db.IntegrityError)):
        return Failure.CONTENT
    return Failure.FATAL


def _classify_redis(exc: redis.exceptions.RedisError) -> Failure:
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                        redis.exceptions.NoPermissionError)):
        return Failure.FATAL
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return Failure.TRANSIENT
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(_REDIS_TRANSIENT_PREFIXES):
        return Failure.TRANSIENT
    if isinstance(exc, _REDIS_TRANSIENT_REPLIES):
        return Failure.TRANSIENT
    return Failure.FATAL
