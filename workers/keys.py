"""Names shared through Redis: stream ids and the keys of leases, status, stop flags and the buffer."""

from __future__ import annotations

from streams.binance.protocol import normalize_channel, normalize_symbol, split_stream_name, stream_name

PREFIX = "collector"
BUFFER_STREAM = f"{PREFIX}:buffer"       # the hand-off buffer (a Redis Stream)
BUFFER_GROUP = "flushers"                # its consumer group
FLUSH_LOCK = f"{PREFIX}:flush-lock"      # one flush at a time
CONNECTION_BUDGET = f"{PREFIX}:connection-attempts"  # sorted set of attempt times
REST_WEIGHT = f"{PREFIX}:rest-weight"    # prefix of the REST request weight counter of each window
BEAT_SEEN = f"{PREFIX}:beat-seen"        # last time a beat-driven task ran
DATASET_FACTS = f"{PREFIX}:dataset"      # JSON: completeness and seals per stream (workers.seal), for metrics


def stream_id(symbol: str, channel: str) -> str:
    """`btcusdt@trade`: the stream's name on the exchange is its id here too."""
    return stream_name(normalize_symbol(symbol), normalize_channel(channel))


def parse_stream_id(sid: str) -> tuple[str, str]:
    return split_stream_name(sid)


def lease_key(sid: str) -> str:
    return f"{PREFIX}:lease:{sid}"


def status_key(sid: str) -> str:
    return f"{PREFIX}:status:{sid}"


def stop_key(sid: str) -> str:
    return f"{PREFIX}:stop:{sid}"


def starting_key(sid: str) -> str:
    return f"{PREFIX}:starting:{sid}"


def last_id_key(sid: str) -> str:
    """The last trade id the stream task handed to the buffer (resume point before the flush catches up)."""
    return f"{PREFIX}:last-id:{sid}"


FAILURES = f"{PREFIX}:failures"          # hash: stream id -> stream tasks that ended with an error
ID_REGRESSIONS = f"{PREFIX}:id-regressions"  # list of trades whose id went back, for the audit


def last_failure_key(sid: str) -> str:
    """Why the stream's last task failed, and when (kept after the task is gone, for the status)."""
    return f"{PREFIX}:last-failure:{sid}"
PERIODIC_ERRORS = f"{PREFIX}:periodic-errors"  # hash: periodic task -> transient failures met


COUNTED = ("trades", "messages", "reconnects", "gaps_found", "gaps_healed", "missed", "ids_back", "parse_errors",
           "errors", "broadcast_dropped")  # a stream's counters that only grow, across its tasks (metrics' _total)


def counters_key(sid: str) -> str:
    """Hash of the stream's counters over all its tasks (COUNTED, and task_failures): they never go back."""
    return f"{PREFIX}:counters:{sid}"
