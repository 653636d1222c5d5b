"""Every database, Redis and exchange error class that can reach a handler, classified in one place."""

from __future__ import annotations

import psycopg
import psycopg.errors as pg
import pytest
import redis.exceptions as r
from django.db import utils as django_db

from streams.binance.errors import (
    ConnectionLost,
    ExchangeUnavailable,
    HandshakeRejected,
    IpBanned,
    ParseError,
    RateLimited,
    UnknownSymbol,
)
from streams.failures import Failure, classify, describe

TRANSIENT, CONTENT, FATAL = Failure.TRANSIENT, Failure.CONTENT, Failure.FATAL


def wrapped(error: Exception) -> Exception:
    """What Django raises for a psycopg error: its own class of the same name, with the cause."""
    outer: Exception = getattr(django_db, type(error).__mro__[1].__name__, django_db.DatabaseError)("wrapped")
    outer.__cause__ = error
    return outer


@pytest.mark.parametrize(("error", "expected"), [
    # PostgreSQL going away or busy: a restart, a failover, a full disk, too many clients.
    (pg.AdminShutdown("terminating connection due to administrator command"), TRANSIENT),
    (pg.CrashShutdown("crash"), TRANSIENT),
    (pg.CannotConnectNow("the database system is starting up"), TRANSIENT),
    (pg.DiskFull("could not extend file"), TRANSIENT),
    (pg.OutOfMemory("out of memory"), TRANSIENT),
    (pg.TooManyConnections("too many clients"), TRANSIENT),
    (pg.SerializationFailure("could not serialize"), TRANSIENT),
    (pg.DeadlockDetected("deadlock"), TRANSIENT),
    (pg.QueryCanceled("statement timeout"), TRANSIENT),
    (pg.ReadOnlySqlTransaction("read-only transaction (a replica after failover)"), TRANSIENT),
    (pg.InFailedSqlTransaction("current transaction is aborted"), TRANSIENT),
    (psycopg.OperationalError("connection failed: Connection refused"), TRANSIENT),
    (psycopg.InterfaceError("the connection is closed"), TRANSIENT),
    (django_db.OperationalError("server closed the connection unexpectedly"), TRANSIENT),
    (django_db.InterfaceError("connection already closed"), TRANSIENT),
    # The data itself refused: isolate it, never retry it.
    (pg.NumericValueOutOfRange("bigint out of range"), CONTENT),
    (pg.StringDataRightTruncation("value too long for type character varying(20)"), CONTENT),
    (pg.CheckViolation("violates check constraint"), CONTENT),
    (pg.UniqueViolation("duplicate key"), CONTENT),
    (django_db.DataError("numeric field overflow"), CONTENT),
    (django_db.IntegrityError("NOT NULL constraint failed"), CONTENT),  # SQLite says it so
    # A bug or a configuration error: stop loudly.
    (pg.UndefinedTable('relation "streams_priceupdate" does not exist'), FATAL),
    (pg.InsufficientPrivilege("permission denied"), FATAL),
    (django_db.ProgrammingError("syntax error"), FATAL),
    # Redis.
    (r.ConnectionError("Error 111 connecting"), TRANSIENT),
    (r.TimeoutError("Timeout reading from socket"), TRANSIENT),
    (r.BusyLoadingError("Redis is loading the dataset in memory"), TRANSIENT),
    (r.ReadOnlyError("You can't write against a read only replica."), TRANSIENT),
    (r.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), TRANSIENT),
    (r.TryAgainError("try again"), TRANSIENT),
    (r.ResponseError("MASTERDOWN Link with MASTER is down"), TRANSIENT),
    (r.AuthenticationError("invalid password"), FATAL),
    (r.NoPermissionError("this user has no permissions"), FATAL),
    (r.ResponseError("ERR unknown command"), FATAL),
    # The exchange (the core's own decision).
    (ConnectionLost("dropped"), TRANSIENT),
    (ExchangeUnavailable(503, "busy"), TRANSIENT),
    (ExchangeUnavailable(200, "answered 200 with a body that is not JSON"), TRANSIENT),
    (RateLimited(429, "slow down", retry_after=1), TRANSIENT),
    (IpBanned(418, "banned", retry_after=120), TRANSIENT),
    (HandshakeRejected(400, "invalid stream"), FATAL),
    (UnknownSymbol("NOPE"), FATAL),
    (ParseError("bad REST row"), FATAL),
    # Sockets of any client; and anything else is a bug.
    (ConnectionResetError(104, "Connection reset by peer"), TRANSIENT),
    (TimeoutError(), TRANSIENT),
    (RuntimeError("a bug"), FATAL),
    (KeyError("x"), FATAL),
])
def test_each_error_class_has_one_treatment(error: Exception, expected: Failure) -> None:
    assert classify(error) is expected


@pytest.mark.parametrize("error", [pg.AdminShutdown("bye"), pg.NumericValueOutOfRange("big"),
                                   pg.UndefinedTable("nope")])
def test_django_s_wrapper_is_classified_by_the_database_error_behind_it(error: Exception) -> None:
    assert classify(wrapped(error)) is classify(error)


def test_the_description_names_the_database_s_own_class_on_one_line() -> None:
    assert describe(wrapped(pg.AdminShutdown("terminating connection\ndue to administrator command"))) == (
        "AdminShutdown: terminating connection due to administrator command")
