"""Which symbol streams should run: one django-celery-beat PeriodicTask per (symbol, channel).

The one place that knows how a symbol stream is represented: a periodic task named `stream <sid>`
that runs `workers.tasks.ensure_stream` with kwargs {"symbol": "BTCUSDT", "channel": "trade"} every
ENSURE_EVERY seconds; its `enabled` flag says whether the stream should run.
"""

from __future__ import annotations

import json
import logging

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from streams.binance.protocol import normalize_channel, normalize_symbol
from streams.binance.rest import BinanceRest
from workers.keys import stream_id
from workers.models import ENSURE_TASK

logger = logging.getLogger(__name__)

NAME_PREFIX = "stream "
ENSURE_EVERY = 10  # s between two ensure_stream ticks of one stream
# A tick still queued after this long is dropped: the next one does the same work, and a stopped
# worker must not come back to a backlog of stale ticks.
ENSURE_EXPIRES = 10
VALIDATE_TIMEOUT = 5.0  # s per REST request when a person waits for the answer (admin, command)


def task_name(symbol: str, channel: str) -> str:
    """`stream btcusdt@trade`; InvalidStreamName for a bad symbol or channel."""
    return f"{NAME_PREFIX}{stream_id(symbol, channel)}"


def stream_tasks() -> QuerySet[PeriodicTask]:
    """Every symbol-stream periodic task, enabled or not, by name."""
    return PeriodicTask.objects.filter(task=ENSURE_TASK, name__startswith=NAME_PREFIX).order_by("name")


def stream_key(task: PeriodicTask) -> tuple[str, str]:
    """(SYMBOL, channel) of a symbol-stream periodic task, from its kwargs."""
    kwargs = json.loads(task.kwargs or "{}")
    return normalize_symbol(kwargs["symbol"]), normalize_channel(kwargs["channel"])


def enabled_streams() -> list[tuple[str, str]]:
    """(SYMBOL, channel) of every stream that should run; a task whose kwargs were edited into nonsense
    is logged and skipped, so that one bad row does not stop the supervision of the others."""
    streams = []
    for task in stream_tasks().filter(enabled=True):
        try:
            streams.append(stream_key(task))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and InvalidStreamName are ValueErrors
            logger.warning("periodic task %r has unusable kwargs %r: %s", task.name, task.kwargs, exc)
    return streams


def validate_symbol(symbol: str) -> str:
    """The normalized symbol if the exchange lists it and it trades.

    Raises InvalidStreamName (malformed), UnknownSymbol (not listed or not trading), or a RestError such
    as ExchangeUnavailable when the exchange cannot answer; each message names the problem."""
    symbol = normalize_symbol(symbol)
    async_to_sync(_check_symbol)(symbol)
    return symbol


async def _check_symbol(symbol: str) -> None:
    # A person waits for this answer: short timeouts, one retry, and no long wait on a 429.
    async with BinanceRest(settings.BINANCE_REST_URL, timeout=VALIDATE_TIMEOUT, retries=1,
                           max_wait=VALIDATE_TIMEOUT) as rest:
        await rest.symbol_info(symbol)


def enable_stream(symbol: str, channel: str, *, validate: bool = False) -> PeriodicTask:
    """Create or re-enable the stream's periodic task (idempotent); with `validate`, ask the exchange first."""
    symbol, channel = normalize_symbol(symbol), normalize_channel(channel)
    if validate:
        validate_symbol(symbol)
    with transaction.atomic():
        task, created = PeriodicTask.objects.select_for_update().get_or_create(
            name=task_name(symbol, channel), defaults=_task_fields(symbol, channel))
        if not created and not _matches(task, symbol, channel):
            for field, value in _task_fields(symbol, channel).items():
                setattr(task, field, value)
            task.save()  # save() (not update()) tells beat that its schedule changed
    logger.info("stream %s enabled (%s)", stream_id(symbol, channel), "created" if created else "existing")
    return task


def disable_stream(symbol: str, channel: str) -> bool:
    """Mark the stream as not to run; False if there was no such stream or it was already disabled."""
    sid = stream_id(symbol, channel)
    with transaction.atomic():
        task = PeriodicTask.objects.select_for_update().filter(name=f"{NAME_PREFIX}{sid}").first()
        if task is None or not task.enabled:
            return False
        task.enabled = False
        task.save()
    logger.info("stream %s disabled", sid)
    return True


def _matches(task: PeriodicTask, symbol: str, channel: str) -> bool:
    wanted = _task_fields(symbol, channel)
    return all(getattr(task, field) == value for field, value in wanted.items())


def _task_fields(symbol: str, channel: str) -> dict[str, object]:
    return {
        "task": ENSURE_TASK,
        "kwargs": json.dumps({"symbol": symbol, "channel": channel}),
        "interval": ensure_schedule(),
        "enabled": True,
        "one_off": False,
        "expire_seconds": ENSURE_EXPIRES,
        "description": f"Keeps the {symbol} {channel} stream running (workers.registry).",
    }


def ensure_schedule() -> IntervalSchedule:
    """The shared every-ENSURE_EVERY-seconds schedule."""
    # No unique constraint on the table (someone may have added a twin in the admin): take the oldest.
    spec = {"every": ENSURE_EVERY, "period": IntervalSchedule.SECONDS}
    return IntervalSchedule.objects.filter(**spec).order_by("id").first() or IntervalSchedule.objects.create(**spec)
