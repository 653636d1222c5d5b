"""Names shared through Redis: the keys of leases, status, stop flags and the buffer.

A stream's keys carry its id's text (`collector:lease:btcusdt@trade`): installations and readers of Redis
know them by it. `stream_id` is the core's (streams.binance.streamid), here too for the collection side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from streams.binance.streamid import StreamId, stream_id

__all__ = ["StreamId", "stream_id"]  # and the key names below

PREFIX = "collector"
BUFFER_STREAM = f"{PREFIX}:buffer"       # the hand-off buffer (a Redis Stream)
BUFFER_GROUP = "flushers"                # its consumer group
FLUSH_LOCK = f"{PREFIX}:flush-lock"      # one flush at a time
CONNECTION_BUDGET = f"{PREFIX}:connection-attempts"  # sorted set of attempt times
REST_WEIGHT = f"{PREFIX}:rest-weight"    # prefix of the REST request weight counter of each window
BEAT_SEEN = f"{PREFIX}:beat-seen"        # last time a beat-driven task ran
DATASET_FACTS = f"{PREFIX}:dataset"      # JSON: completeness and seals per stream (workers.seal), for metrics


LEASE_PREFIX = f"{PREFIX}:lease:"    # then the stream id's text
STATUS_PREFIX = f"{PREFIX}:status:"


def lease_key(sid: StreamId) -> str:
    return f"{LEASE_PREFIX}{sid}"


def status_key(sid: StreamId) -> str:
    return f"{STATUS_PREFIX}{sid}"


def streams_of_keys(keys: Iterable[bytes], prefix: str) -> dict[bytes, StreamId]:
    """The stream of each key named `<prefix><stream id>`; a key whose rest is not a stream id is left out."""
    found = {}
    for key in keys:
        with contextlib.suppress(ValueError):  # InvalidStreamName
            found[key] = StreamId.parse(key.decode()[len(prefix):])
    return found


def stop_key(sid: StreamId) -> str:
    return f"{PREFIX}:stop:{sid}"


def starting_key(sid: StreamId) -> str:
    return f"{PREFIX}:starting:{sid}"


def last_id_key(sid: StreamId) -> str:
    """The last trade id the stream task handed to the buffer (resume point before the flush catches up)."""
    return f"{PREFIX}:last-id:{sid}"


FAILURES = f"{PREFIX}:failures"          # hash: stream id -> stream tasks that ended with an error
ID_REGRESSIONS = f"{PREFIX}:id-regressions"  # list of trades whose id went back, for the audit


def last_failure_key(sid: StreamId) -> str:
    """Why the stream's last task failed, and when (kept after the task is gone, for the status)."""
    return f"{PREFIX}:last-failure:{sid}"
PERIODIC_ERRORS = f"{PREFIX}:periodic-errors"  # hash: periodic task -> transient failures met


COUNTED = ("trades", "messages", "reconnects", "gaps_found", "gaps_healed", "missed", "ids_back", "parse_errors",
           "errors", "broadcast_dropped")  # a stream's counters that only grow, across its tasks (metrics' _total)


def counters_key(sid: StreamId) -> str:
    """Hash of the stream's counters over all its tasks (COUNTED, and task_failures): they never go back."""
    return f"{PREFIX}:counters:{sid}"
