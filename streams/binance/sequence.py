"""Trade-id continuity: Binance trade ids (and aggregate ids) are consecutive per symbol and channel."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    NEXT = "next"            # the id that follows the last one handed on
    DUPLICATE = "duplicate"  # already handed on (overlapping connections, a REST page overlap)
    GAP = "gap"              # ids are missing before this one
    FIRST = "first"          # nothing handed on yet and no resume point: accept as the start


@dataclass(frozen=True, slots=True)
class Gap:
    """The ids missing between what was handed on and what arrived: first..last inclusive."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def classify(last_id: int | None, trade_id: int) -> Verdict:
    """Where `trade_id` stands relative to the last id handed on."""
    if last_id is None:
        return Verdict.FIRST
    if trade_id == last_id + 1:
        return Verdict.NEXT
    if trade_id <= last_id:
        return Verdict.DUPLICATE
    return Verdict.GAP


def missing_between(last_id: int, trade_id: int) -> Gap:
    """The gap before `trade_id` when `last_id` was the last id handed on."""
    return Gap(last_id + 1, trade_id - 1)


def bounded_gap(gap: Gap, max_trades: int) -> tuple[Gap | None, Gap | None]:
    """Split a gap into (the part beyond the backfill window, the part to fetch): the newest ids win."""
    if gap.size <= max_trades:
        return None, gap
    if max_trades <= 0:
        return gap, None
    return Gap(gap.first, gap.last - max_trades), Gap(gap.last - max_trades + 1, gap.last)
