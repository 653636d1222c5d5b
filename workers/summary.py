"""One line per interval (LOG_SUMMARY_INTERVAL, a minute) from each Celery process: what it did since its last
line. The per-run lines of the periodic ticks are DEBUG (project/celery.py), so an idle service prints a
line a minute per process, and the ready banner with the addresses stays on the screen.

- a worker of the `celery` queue: the ticks run (per task), trades written by the flush, failed runs,
  transient errors met (retried at the next tick), and the hand-off buffer's depth now;
- a worker of the `streams` queue: the streams it hosts now, trades they handed to the buffer, errors met;
- beat: the tasks it sent.

The counts are kept in the process that runs the tasks: the Procfile's workers use the threads pool (a
prefork child's counts would stay in the child).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import after_task_publish, beat_init, worker_ready
from django.conf import settings

logger = logging.getLogger(__name__)

STREAMS_QUEUE, TICKS_QUEUE = "streams", "celery"


class Tally:
    """What happened since the last summary line; added to from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._streams: dict[str, tuple[int, int]] = {}  # hosted stream task -> (trades, errors) counted so far

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def stream_progress(self, task_id: str, trades: int, errors: int) -> None:
        """A hosted stream task's running totals (from its status): what grew since the last call counts."""
        with self._lock:
            seen_trades, seen_errors = self._streams.get(task_id, (0, 0))
            self._counts["handed"] += max(0, trades - seen_trades)
            self._counts["stream errors"] += max(0, errors - seen_errors)
            self._streams[task_id] = (max(trades, seen_trades), max(errors, seen_errors))

    def stream_ended(self, task_id: str) -> None:
        with self._lock:
            self._streams.pop(task_id, None)

    def take(self) -> tuple[Counter[str], int]:
        """The counts since the last take, and the number of streams hosted now."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            return counts, len(self._streams)


TALLY = Tally()


def ticks_part(counts: Counter[str], buffer: str) -> str:
    """The `celery` queue's side: ticks run per task, trades written, failures, and the buffer."""
    runs = ", ".join(f"{name.removeprefix('tick ')} {n}" for name, n in sorted(counts.items())
                     if name.startswith("tick "))
    return (f"ticks run: {runs or 'none'}; {counts['written']} trades written; {counts['failed']} failed, "
            f"{counts['transient']} transient errors; buffer: {buffer}")


def streams_part(counts: Counter[str], hosted: int) -> str:
    """The `streams` queue's side: streams hosted now, trades handed to the buffer, errors."""
    return f"{hosted} streams hosted; {counts['handed']} trades handed to the buffer; {counts['stream errors']} errors"


def beat_part(counts: Counter[str]) -> str:
    sent = sorted((name.removeprefix("sent "), n) for name, n in counts.items() if name.startswith("sent "))
    return f"sent {sum(n for _, n in sent)} tasks" + (": " + ", ".join(f"{name} {n}" for name, n in sent) if sent
                                                       else "")


def buffer_depth() -> str:
    """The hand-off buffer's depth now, or why it is not known (Redis away: that is said elsewhere too)."""
    from workers.buffer import buffer_stats
    from workers.redis import sync_redis

    try:
        stats = buffer_stats(sync_redis())
    except (redis.RedisError, OSError) as exc:
        return f"unknown ({type(exc).__name__})"
    return f"{stats['trades_waiting']} trades waiting"


class SummaryLines:
    """A daemon thread that logs `line(seconds since the last one)` every `interval` seconds."""

    def __init__(self, interval: float, line: Callable[[float], str]) -> None:
        self.interval = interval
        self._line = line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="summary", daemon=True)

    def start(self) -> SummaryLines:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                logger.info("last %.0f s: %s", now - last, self._line(now - last))
            except Exception:  # a summary is not worth a process: said once per interval, with the traceback
                logger.exception("summary: could not be made")
            last = now


def worker_line(queues: set[str]) -> Callable[[float], str]:
    """The summary of a worker consuming `queues` (both in a small deployment: one line with both sides)."""

    def line(_: float) -> str:
        counts, hosted = TALLY.take()
        parts = []
        if STREAMS_QUEUE in queues:
            parts.append(streams_part(counts, hosted))
        if TICKS_QUEUE in queues or not parts:
            parts.append(ticks_part(counts, buffer_depth()))
        return "; ".join(parts)

    return line


def beat_line(_: float) -> str:
    counts, _hosted = TALLY.take()
    return beat_part(counts)


_RUNNING: list[SummaryLines] = []  # the process's summary (one), kept for tests and a clean stop


def _start(line: Callable[[float], str]) -> None:
    if settings.LOG_SUMMARY_INTERVAL > 0 and not _RUNNING:
        _RUNNING.append(SummaryLines(settings.LOG_SUMMARY_INTERVAL, line).start())


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    if sender is not None:  # a worker's consumer: the queues it takes tasks from
        _start(worker_line({queue.name for queue in sender.task_consumer.queues}))


@beat_init.connect
def _on_beat_init(sender: Any = None, **_: Any) -> None:
    if sender is not None:  # beat's service
        _start(beat_line)


@after_task_publish.connect
def _on_sent(sender: str | None = None, **_: Any) -> None:
    TALLY.add(f"sent {(sender or '?').rpartition('.')[2]}")
