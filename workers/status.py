"""Each stream's live status in Redis: one typed record, written by its task's heartbeat, read by the
supervisor, the status pages, the admin, the metrics and Flower.

One clock: a host whose wall clock is off must neither get its healthy streams restarted
nor hide a stall. The task writes ages it measured itself on the monotonic clock (seconds since the last
frame, since connecting, stuck for); the write is stamped with the Redis server's clock (`updated_at`,
inside the script), and readers compare with the same server clock. Exchange times (`last_trade_ts`)
are shown as they are; the lag is measured by the task when the trade arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Final

import redis
import redis.asyncio
from django.conf import settings

from workers.keys import STATUS_PREFIX, StreamId, status_key, streams_of_keys
from workers.redis import sync_redis

# KEYS: status key. ARGV: ttl ms, then field, value pairs. The write time is the server's own clock.
_WRITE_LUA = """
local now = redis.call('TIME')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'updated_at', now[1] .. '.' .. string.format('%06d', now[2]), unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass
class StreamStatus:
    """What a stream task reports at each heartbeat (ages in seconds, measured by the task itself)."""

    state: str = "starting"
    worker: str = ""
    connected_for: float | None = None     # since the current connection opened
    last_frame_age: float | None = None    # since any frame arrived (a silent connection grows this)
    last_trade_age: float | None = None    # since the last live trade arrived
    stuck_for: float = 0.0                  # trades have waited this long without any being handed on
    trades: int = 0                         # handed to the buffer by this task
    trades_per_s: float = 0.0
    messages: int = 0
    reconnects: int = 0
    gaps_found: int = 0
    gaps_healed: int = 0
    missed: int = 0                         # trade ids given up (beyond the backfill window, REST failed)
    ids_back: int = 0                       # live ids behind ones its subscription delivered (a replay, a reset)
    parse_errors: int = 0
    lag_ms: int | None = None               # receive time minus exchange event time of the last trade
    last_trade_ts: int | None = None        # the exchange's event time of the last trade (ms or µs)
    connection_wait: float = 0.0
    broadcast_dropped: int = 0
    errors: int = 0                         # transient errors met (Redis, REST), retried
    last_error: str = ""
    # Filled in by the reader, on the Redis server's clock.
    updated_at: float | None = field(default=None, metadata={"derived": True})
    heartbeat_age: float | None = field(default=None, metadata={"derived": True})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def aged(self) -> StreamStatus:
        """The ages as of now: each written age plus the time since it was written."""
        extra = self.heartbeat_age or 0.0
        return dataclasses.replace(
            self,
            connected_for=_plus(self.connected_for, extra),
            last_frame_age=_plus(self.last_frame_age, extra),
            last_trade_age=_plus(self.last_trade_age, extra),
            stuck_for=self.stuck_for + extra if self.stuck_for else 0.0,
        )


_WRITTEN: Final = tuple(f for f in fields(StreamStatus) if not f.metadata.get("derived"))
_CONVERT: Final[dict[str, Callable[[str], Any]]] = {"int": lambda text: int(float(text)), "float": float, "str": str}


def _parser(type_text: str) -> tuple[Callable[[str], Any], Any]:
    """(convert, value for "") of a field from its annotation ("float | None", "int", "str")."""
    base = type_text.replace("| None", "").strip()
    convert = _CONVERT[base]
    return convert, None if "None" in type_text else convert("0" if base != "str" else "")


_PARSERS: Final = {f.name: _parser(str(f.type)) for f in fields(StreamStatus)}


def _plus(age: float | None, extra: float) -> float | None:
    return None if age is None else age + extra


def encode(status: StreamStatus) -> list[str]:
    """Field, value pairs for HSET ("" for None)."""
    pairs: list[str] = []
    for f in _WRITTEN:
        value = getattr(status, f.name)
        pairs += [f.name, "" if value is None else str(value)]
    return pairs


def decode(raw: dict[bytes, bytes], server_now: float) -> StreamStatus:
    """A status as written, with `updated_at`, `heartbeat_age` and the ages brought up to now."""
    values: dict[str, Any] = {}
    for name_bytes, value_bytes in raw.items():
        name, text = name_bytes.decode(), value_bytes.decode()
        if name not in _PARSERS:
            continue  # written by another version: ignored
        convert, empty = _PARSERS[name]
        try:
            values[name] = empty if text == "" else convert(text)
        except ValueError:
            values[name] = empty
    status = StreamStatus(**values)
    if status.updated_at is not None:
        status.heartbeat_age = max(0.0, server_now - status.updated_at)
    return status.aged()


async def write_status(client: redis.asyncio.Redis, sid: StreamId, status: StreamStatus, ttl: float) -> None:
    """Replace the stream's status; it expires if the heartbeat stops (a dead task leaves no false status)."""
    await client.eval(_WRITE_LUA, 1, status_key(sid), int(ttl * 1000), *encode(status))


def queue_status(pipe: Any, sid: StreamId, status: StreamStatus, ttl: float) -> None:
    """`write_status` queued in a pipeline (the runtime writes every stream's status in one round trip)."""
    pipe.eval(_WRITE_LUA, 1, status_key(sid), int(ttl * 1000), *encode(status))


def write_status_now(client: redis.Redis, sid: StreamId, status: StreamStatus, ttl: float) -> None:
    """`write_status` for synchronous code (tests, tools)."""
    client.eval(_WRITE_LUA, 1, status_key(sid), int(ttl * 1000), *encode(status))


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def read_status(sid: StreamId) -> StreamStatus | None:
    """The status of stream `sid`, or None if no task reports it."""
    client = sync_redis()
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(status_key(sid))
        pipe.time()
        raw, (seconds, micros) = pipe.execute()
    return decode(raw, seconds + micros / 1e6) if raw else None


def all_statuses() -> dict[StreamId, StreamStatus]:
    """Every status written, by stream (a key whose name is not a stream's is skipped)."""
    client = sync_redis()
    sids = streams_of_keys(client.scan_iter(match=f"{STATUS_PREFIX}*", count=500), STATUS_PREFIX)
    if not sids:
        return {}
    with client.pipeline(transaction=False) as pipe:
        for key in sids:
            pipe.hgetall(key)
        pipe.time()
        *raws, (seconds, micros) = pipe.execute()
    now = seconds + micros / 1e6
    return {sid: decode(raw, now) for sid, raw in zip(sids.values(), raws, strict=True) if raw}


NOT_RUNNING: Final = "not running"  # enabled, and no task reports it
STALLED: Final = "stalled"          # a task reports it, but its heartbeat, data or progress is stale


def shown_state(status: StreamStatus | None) -> str:
    """The state every reader shows (status page, API, metrics, live page): NOT_RUNNING without a status,
    STALLED when it `is_stale`, else what the task reported."""
    if status is None:
        return NOT_RUNNING
    return STALLED if is_stale(status) else status.state


def is_stale(status: StreamStatus | None) -> bool:
    """A status nobody renews, a connection that delivers no frame at all, or trades that wait without
    progress, for COLLECTOR_STALE_AFTER (ages as read, on one clock).

    A quiet market still shows frames: the client probes a silent connection (LIST_SUBSCRIPTIONS)."""
    if status is None:
        return True
    limit = settings.COLLECTOR_STALE_AFTER
    if status.heartbeat_age is None or status.heartbeat_age > limit:
        return True
    if status.stuck_for > limit:
        return True
    frame_age = status.last_frame_age
    return status.state == "connected" and frame_age is not None and frame_age > limit


def stale_reason(status: StreamStatus | None) -> str:
    if status is None:
        return "no status"
    return (f"state={status.state} heartbeat_age={_round(status.heartbeat_age)} "
            f"last_frame_age={_round(status.last_frame_age)} stuck_for={_round(status.stuck_for)}")


def _round(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

