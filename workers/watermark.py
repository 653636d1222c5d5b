"""The audit's verified watermark per stream: up to which id every trade is known to be stored.

Kept in the database (`AuditMark`): it must survive Redis losing everything. The walk moves it up, slice by
slice, counting ids (one index scan per slice) and looking for holes only where a count falls short; what is
done with the holes is the caller's (the audit fills them; an import only verifies). Trades stored below the
verified range, or a hole found there, send it back down (`lower_watermark`), so the walk goes through them
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from streams import queries
from streams.binance.logcontext import stream_context
from streams.binance.sequence import Gap
from workers.keys import StreamId, stream_id
from workers.models import AuditMark

logger = logging.getLogger(__name__)

_PASS_SECONDS = 10.0  # clean slices counted per pass, at most this long
_VERIFY_SCAN = 5_000_000  # ids counted at a time when verifying without filling (after an import)

# (symbol, channel, (first, last) of the slice, the holes found in it) -> (verified up to, trades stored)
OnHoles = Callable[[str, str, tuple[int, int], list[Gap]], tuple[int, int]]


@dataclass(frozen=True)
class Pass:
    holes: int = 0
    stored: int = 0
    verified_through: int | None = None


def verify_stored(symbol: str, channel: str, seconds: float = 600.0) -> int | None:
    """Move the watermark up over what is stored, counting only (no REST): up to the first hole, the newest
    id, or `seconds`. Returns the watermark. For the archive import, which has just stored a range."""
    sid = stream_id(symbol, channel)
    with stream_context(sid):
        return walk(sid, max(settings.COLLECTOR_AUDIT_SCAN, _VERIFY_SCAN), on_holes=None,
                    seconds=seconds).verified_through


def watermark(symbol: str, channel: str) -> int | None:
    return _mark(stream_id(symbol, channel))


def lower_watermark(symbol: str, channel: str, below: int) -> None:
    """Ids from `below + 1` on are not verified any more (stored under the verified range, or found missing)."""
    moved = AuditMark.objects.filter(stream=str(stream_id(symbol, channel)), verified_through__gt=below).update(
        verified_through=below)
    if moved:
        logger.info("%s: audit watermark back to %d", stream_id(symbol, channel), below)


def _mark(sid: StreamId) -> int | None:
    return AuditMark.objects.filter(stream=str(sid)).values_list("verified_through", flat=True).first()


def _move_mark(sid: StreamId, old: int | None, new: int) -> bool:
    """Compare-and-set: a watermark lowered meanwhile (an import) is never raised over unverified ids."""
    if old is None:
        return AuditMark.objects.get_or_create(stream=str(sid), defaults={"verified_through": new})[1]
    return AuditMark.objects.filter(stream=str(sid), verified_through=old).update(verified_through=new) == 1


def walk(sid: StreamId, scan: int, *, on_holes: OnHoles | None, seconds: float = _PASS_SECONDS) -> Pass:
    """Move the watermark of stream `sid` up, slice by slice, for at most `seconds`. A slice with holes goes to
    `on_holes` (which fills what it can and says how far the slice is whole now, and what it stored); without
    it the walk stops just before the first hole."""
    symbol, channel = sid.symbol, sid.channel
    mark = _mark(sid)
    start = mark if mark is not None else queries.first_id(symbol, channel)
    top = queries.last_id(symbol, channel)
    if start is None or top is None:
        return Pass()  # nothing stored yet
    # The highest stored id at or below `start` anchors the first slice: a hole right above it is seen.
    anchor = queries.id_before(symbol, channel, start + 1) or start
    deadline = time.monotonic() + seconds
    found: list[Gap] = []
    stored = 0
    while True:
        # The slice ends at a stored id (the first one `scan` ids up, or the newest): a hole that reaches past
        # `anchor + scan` is anchored on both sides and found whole.
        end = queries.id_after(symbol, channel, anchor + scan - 1) or top
        if queries.count_ids(symbol, channel, anchor, end) != end - anchor + 1:
            found = queries.holes(symbol, channel, anchor, end)
        if found:
            end, stored = (on_holes(symbol, channel, (anchor, end), found) if on_holes is not None
                           else (found[0].first - 1, 0))
        if end > (mark if mark is not None else end - 1):
            if not _move_mark(sid, mark, end):
                break  # moved by someone else meanwhile (lowered by an import): next pass
            mark = end
        if found or end >= top or time.monotonic() > deadline:
            break
        anchor = end
    return Pass(len(found), stored, mark)
