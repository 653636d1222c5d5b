"""Which symbol streams should run: one django-celery-beat PeriodicTask per (symbol, channel).

The one place that knows how a symbol stream is represented: a periodic task named `stream <sid>`
that runs `workers.tasks.ensure_stream` with kwargs {"symbol": "BTCUSDT", "channel": "trade"} every
ENSURE_EVERY seconds; its `enabled` flag says whether the stream should run. Changes are made in bulk
(one transaction, one notice to beat) whether they touch one stream or every listed symbol.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from streams.binance.backoff import RETRY
from streams.binance.protocol import CHANNELS, normalize_channel, normalize_symbol
from streams.binance.rest import BinanceRest
from workers.keys import StreamId, stream_id
from workers.models import ENSURE_TASK

logger = logging.getLogger(__name__)

NAME_PREFIX = "stream "
# s between two ensure_stream ticks of one stream. The supervise_streams pass (every 10 s) is what starts,
# restarts and stops streams, reading the enabled set in one query; a stream's own tick is the switch the
# admin shows and a slow second path. Ticks are beat's cost: beat spends O(all its tasks) per task it
# sends, and 1,500 streams every 10 s asked for 150 sends/s, more than beat managed on a whole core (docs/benchmarks.md,
# "Enabling 1,500 streams"). Hourly, spread over the hour (`_tick_offset`), they cost beat 0.4 sends/s.
# Migration 0005 moved existing stream tasks to this schedule; a later change needs a migration too.
ENSURE_EVERY = 3600
_BATCH = 500  # rows per INSERT / UPDATE statement
# A tick still queued after this long is dropped: the next one does the same work, and a stopped
# worker must not come back to a backlog of stale ticks.
ENSURE_EXPIRES = 10
VALIDATE_TIMEOUT = 5.0  # s per REST request when a person waits for the answer (admin, command)


def task_name(sid: StreamId) -> str:
    """`stream btcusdt@trade`."""
    return f"{NAME_PREFIX}{sid}"


def stream_tasks() -> QuerySet[PeriodicTask]:
    """Every symbol-stream periodic task, enabled or not, by name."""
    return PeriodicTask.objects.filter(task=ENSURE_TASK, name__startswith=NAME_PREFIX).order_by("name")


def stream_key(task: PeriodicTask) -> StreamId:
    """The stream of a symbol-stream periodic task, from its kwargs."""
    return key_of(task.kwargs)


def key_of(kwargs_text: str | None) -> StreamId:
    """The stream of a stream task's kwargs text; ValueError, KeyError or TypeError if unusable."""
    kwargs = json.loads(kwargs_text or "{}")
    return stream_id(kwargs["symbol"], kwargs["channel"])


def enabled_streams() -> list[StreamId]:
    """Every stream that should run; a task whose kwargs were edited into nonsense is logged and skipped,
    so that one bad row does not stop the supervision of the others."""
    streams = []
    for name, kwargs in stream_tasks().filter(enabled=True).values_list("name", "kwargs"):  # 2 columns, not 20
        try:
            streams.append(key_of(kwargs))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and InvalidStreamName are ValueErrors
            logger.warning("periodic task %r has unusable kwargs %r: %s", name, kwargs, exc)
    return streams


def enabled_channels(symbol: str) -> list[str]:
    """The channels of the symbol's enabled streams, by their task names: one indexed lookup whatever the
    number of streams (for requests that anyone may make, such as the live page's)."""
    names = [task_name(stream_id(symbol, channel)) for channel in CHANNELS]
    found = []
    for name, kwargs in stream_tasks().filter(enabled=True, name__in=names).values_list("name", "kwargs"):
        try:
            sid = key_of(kwargs)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("periodic task %r has unusable kwargs %r: %s", name, kwargs, exc)
            continue
        if sid.symbol == symbol:
            found.append(sid.channel)
    return sorted(found, key=CHANNELS.index)


def enabled_symbols() -> list[str]:
    """The symbols of the enabled streams, once each, sorted."""
    return sorted({sid.symbol for sid in enabled_streams()})


def validate_symbol(symbol: str) -> str:
    """The normalized symbol if the exchange lists it and it trades.

    Raises InvalidStreamName (malformed), UnknownSymbol (not listed or not trading), or a RestError such
    as ExchangeUnavailable when the exchange cannot answer; each message names the problem."""
    symbol = normalize_symbol(symbol)
    async_to_sync(_check_symbol)(symbol)
    return symbol


async def _check_symbol(symbol: str) -> None:
    # A person waits for this answer: short timeouts, one retry, and no long wait on a 429.
    async with BinanceRest(settings.BINANCE_REST_URL, timeout=VALIDATE_TIMEOUT, retry=RETRY["symbol check"],
                           max_wait=VALIDATE_TIMEOUT) as rest:
        await rest.symbol_info(symbol)


@dataclass
class Changes:
    """What a bulk change did: streams changed now, and those that were so already (stream ids)."""

    done: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)


def enable_stream(symbol: str, channel: str, *, validate: bool = False) -> PeriodicTask:
    """Create or re-enable the stream's periodic task (idempotent); with `validate`, ask the exchange first."""
    sid = stream_id(symbol, channel)
    if validate:
        validate_symbol(sid.symbol)
    enable_streams([sid])
    return PeriodicTask.objects.get(name=task_name(sid))


def disable_stream(symbol: str, channel: str) -> bool:
    """Mark the stream as not to run; False if there was no such stream or it was already disabled."""
    return bool(disable_streams([stream_id(symbol, channel)]).done)


def enable_streams(streams: Iterable[StreamId]) -> Changes:
    """Create or re-enable the periodic task of each stream, in one transaction with one notice to beat
    (idempotent: a stream already enabled as it should be is not written). The symbols are not checked
    with the exchange."""
    wanted = {task_name(sid): sid for sid in streams}
    changes, now = Changes(), timezone.now()
    with transaction.atomic():
        schedule = ensure_schedule()
        existing = {t.name: t for t in PeriodicTask.objects.select_for_update().filter(name__in=list(wanted))}
        created: list[PeriodicTask] = []
        updated: list[PeriodicTask] = []
        for name, sid in sorted(wanted.items()):
            fields = _task_fields(sid, schedule)
            task = existing.get(name)
            if task is not None and all(getattr(task, f) == v for f, v in fields.items()):  # attnames: no queries
                changes.already.append(str(sid))
                continue
            task = task or PeriodicTask(name=name)
            if task.pk is None or not task.enabled:
                task.last_run_at = _first_tick_base(name, now)
            for f, v in fields.items():
                setattr(task, f, v)
            task.date_changed = now  # auto_now is not applied by bulk_update
            (updated if task.pk else created).append(task)
            changes.done.append(str(sid))
        # A task of the same name created meanwhile by another transaction (two admins at once) is theirs.
        PeriodicTask.objects.bulk_create(created, batch_size=_BATCH, ignore_conflicts=True)
        PeriodicTask.objects.bulk_update(updated, [*_FIELDS, "last_run_at", "date_changed"], batch_size=_BATCH)
        if changes.done:
            PeriodicTasks.update_changed()  # bulk writes skip save() and its signal: tell beat once
    _log("enabled", changes)
    return changes


def disable_streams(streams: Iterable[StreamId]) -> Changes:
    """Disable the periodic task of each stream that is enabled, in one transaction with one notice to
    beat. `already` lists those disabled before; streams that have no task are in neither list."""
    names = [task_name(sid) for sid in streams]
    return _disable(stream_tasks().filter(name__in=names))


def disable_all(channels: Iterable[str] | None = None) -> Changes:
    """Disable every symbol stream, or those of `channels`."""
    tasks = stream_tasks()
    if channels is not None:
        by_channel = Q()
        for channel in channels:
            by_channel |= Q(name__endswith=f"@{normalize_channel(channel)}")
        tasks = tasks.filter(by_channel)
    return _disable(tasks)


def _disable(tasks: QuerySet[PeriodicTask]) -> Changes:
    changes, now = Changes(), timezone.now()
    with transaction.atomic():
        changed = []
        for task in tasks.select_for_update():
            sid = task.name[len(NAME_PREFIX):]
            if not task.enabled:
                changes.already.append(sid)
                continue
            # What PeriodicTask.save() does for a disabled task: re-enabled, it ticks a whole interval later.
            task.enabled, task.last_run_at, task.date_changed = False, None, now
            changed.append(task)
            changes.done.append(sid)
        PeriodicTask.objects.bulk_update(changed, ["enabled", "last_run_at", "date_changed"], batch_size=_BATCH)
        if changed:
            PeriodicTasks.update_changed()
    _log("disabled", changes)
    return changes


def _log(verb: str, changes: Changes) -> None:
    if not changes.done:
        return
    shown = ", ".join(changes.done[:20]) + (f" and {len(changes.done) - 20} more" if len(changes.done) > 20 else "")
    logger.info("%s %d stream(s): %s (%d already were)", verb, len(changes.done), shown, len(changes.already))


def summary(verb: str, changes: Changes, skipped: dict[str, str] | None = None) -> str:
    """One line for a person: `enabled 1,487 streams (12 already enabled); 13 symbols not trading skipped`,
    or `enabled btcusdt@trade` when one stream was asked for."""
    if len(changes.done) + len(changes.already) == 1 and not skipped:
        return f"{verb} {changes.done[0]}" if changes.done else f"{changes.already[0]} was already {verb}"
    line = f"{verb} {_count(len(changes.done), 'stream')}"
    if changes.already:
        line += f" ({len(changes.already):,} already {verb})"
    if skipped:
        names = ", ".join(f"{s} ({status})" for s, status in sorted(skipped.items())[:10])
        more = ", ..." if len(skipped) > 10 else ""
        line += f"; {_count(len(skipped), 'symbol')} not trading skipped: {names}{more}"
    return line


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


_FIELDS = ("task", "kwargs", "interval", "enabled", "one_off", "expire_seconds", "description")


def _task_fields(sid: StreamId, schedule: IntervalSchedule) -> dict[str, object]:
    """The task's fields by attribute name (`interval_id`: comparing it costs no query)."""
    symbol, channel = sid.symbol, sid.channel
    return {
        "task": ENSURE_TASK,
        "kwargs": json.dumps({"symbol": symbol, "channel": channel}),
        "interval_id": schedule.pk,
        "enabled": True,
        "one_off": False,
        "expire_seconds": ENSURE_EXPIRES,
        "description": f"Keeps the {symbol} {channel} stream running (workers.registry).",
    }


def _tick_offset(name: str, every: int = ENSURE_EVERY) -> int:
    """Seconds into the interval at which this stream ticks: spread evenly by name, so that 1,500 streams
    enabled at once do not all tick in the same second (beat sends one task per loop: a burst of 1,500
    would hold back the flush ticks behind it)."""
    return zlib.crc32(name.encode()) % every


def _first_tick_base(name: str, now: datetime) -> datetime:
    """The `last_run_at` beat counts the first tick from (it ticks one interval later)."""
    return now - timedelta(seconds=_tick_offset(name))


def ensure_schedule() -> IntervalSchedule:
    """The shared every-ENSURE_EVERY-seconds schedule (migration 0005 makes the same one)."""
    # No unique constraint on the table (someone may have added a twin in the admin): take the oldest.
    spec = {"every": ENSURE_EVERY, "period": IntervalSchedule.SECONDS}
    return IntervalSchedule.objects.filter(**spec).order_by("id").first() or IntervalSchedule.objects.create(**spec)
