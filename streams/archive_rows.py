"""An archive file's rows: the zip's expected member read by Arrow's CSV reader and checked whole, in columns,
before anything of it is stored; then handed on one UTC day at a time in the lake's columns.

What a file must be, or it is refused with the reason (and its line, for a bad row):
- a zip whose member is the expected CSV (`<name>.csv`), deflated or stored, not encrypted, at most
  `max_member_bytes` uncompressed and at most `max_ratio` times its compressed size, and no more bytes out
  of it than its header declares (a zip bomb stops at once, not after 600 MB);
- rows with every column (a header row, as futures files have, is recognised and skipped), no line longer
  than `block_bytes`, plain decimals that numeric(28,8) holds exactly, booleans, integer ids and times;
- ids strictly increasing, times never going back, every time inside the file's period (in the file's
  unit: milliseconds before 2025-01-01, microseconds from then on), prices and quantities above zero, and
  for aggregate trades a first trade id not above the last.
The CRC-32 of the member is checked by zipfile when its last byte is read: the caller commits nothing
before the iterator is exhausted.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import IO, Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from streams.archive import AGG_TRADES, ArchiveFormatError, FileRef
from streams.lake.schema import FILE_SCHEMA, PRICE, TIME

_DAY_US: Final = 86_400_000_000
_EPOCH: Final = date(1970, 1, 1)
_TYPES: Final[dict[str, pa.DataType]] = {
    "id": pa.int64(), "price": PRICE, "qty": PRICE, "time": pa.int64(), "isBuyerMaker": pa.bool_(),
    "first_id": pa.int64(), "last_id": pa.int64(),
}
_TRUE: Final = ["True", "true"]
_FALSE: Final = ["False", "false"]


@dataclass(frozen=True)
class Limits:
    """What a file may be before it is refused unread."""

    max_member_bytes: int = 64 << 30   # a month of the busiest symbol's trades is a few GB of CSV
    max_ratio: float = 40.0            # trade CSV deflates 4-8x; a bomb, hundreds of times
    block_bytes: int = 4 << 20         # read and parsed at a time; also the longest line allowed


class _Capped(io.RawIOBase):
    """A member's bytes, refused past `limit` (what its header declared)."""

    def __init__(self, source: IO[bytes], limit: int, name: str) -> None:
        self._source, self._left, self._name = source, limit, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise ArchiveFormatError(f"{self._name} holds more bytes than its zip header declares")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def open_member(archive: zipfile.ZipFile, ref: FileRef, limits: Limits) -> IO[bytes]:
    """The expected member's bytes, once the zip's header says it may be read (ArchiveFormatError if not)."""
    names = archive.namelist()
    if ref.member not in names:
        held = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") if names else "nothing"
        raise ArchiveFormatError(f"{ref.name} has no member {ref.member} (it holds {held})")
    info = archive.getinfo(ref.member)
    if info.flag_bits & 0x1:
        raise ArchiveFormatError(f"{ref.member} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArchiveFormatError(f"{ref.member} uses compression method {info.compress_type}, not deflate")
    if info.file_size > limits.max_member_bytes:
        raise ArchiveFormatError(f"{ref.member} is {info.file_size:,} bytes, over the {limits.max_member_bytes:,} "
                                 "a file may hold")
    if info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise ArchiveFormatError(f"{ref.member} inflates {info.file_size / max(info.compress_size, 1):,.0f} times "
                                 f"(at most {limits.max_ratio:.0f}: trade CSV deflates a few times)")
    return io.BufferedReader(_Capped(archive.open(info), info.file_size, ref.member), buffer_size=1 << 16)


def read_days(stream: IO[bytes], ref: FileRef, limits: Limits) -> Iterator[tuple[date, pa.Table]]:
    """The member's rows, checked, one UTC day at a time (FILE_SCHEMA, in id order). Raises
    ArchiveFormatError naming the first line that breaks a rule."""
    checker: _Checker | None = None
    day_parts: list[pa.Table] = []
    current: date | None = None
    for block, first_line in _blocks(stream, ref, limits.block_bytes):
        rows = block
        if checker is None:
            header = block[:1].isalpha()  # a header row (futures files have one), recognised by its first letter
            rows = block.split(b"\n", 1)[1] if header else block
            checker = _Checker(ref, first_line + header)
        for day, part in checker.check(_parse(rows, ref, checker.line)):
            if current is not None and day != current:
                yield current, pa.concat_tables(day_parts)
                day_parts = []
            current = day
            day_parts.append(part)
    if current is not None:
        yield current, pa.concat_tables(day_parts)


def _blocks(stream: IO[bytes], ref: FileRef, size: int) -> Iterator[tuple[bytes, int]]:
    """Whole lines, about `size` bytes at a time, each with the number of its first line."""
    line, rest = 1, b""
    while chunk := stream.read(size):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) > size:
                raise ArchiveFormatError(f"{ref.member}: line {line:,} is longer than {size:,} bytes "
                                         "(a row is under 200)")
            rest = data
            continue
        block, rest = data[:cut], data[cut:]
        yield block, line
        line += block.count(b"\n")
    if rest.strip():
        yield rest + b"\n", line


def _parse(block: bytes, ref: FileRef, first_line: int) -> pa.RecordBatch:
    try:
        table = _read_csv(block, ref)
    except pa.ArrowInvalid as exc:
        line, text = _first_bad_line(block, ref, first_line)
        raise ArchiveFormatError(f"{ref.member}: line {line:,}: {text[:120]!r} is not a {ref.dataset.name} row "
                                 f"({str(exc).splitlines()[0][:160]})") from None
    return pa.RecordBatch.from_arrays([column.combine_chunks() for column in table.columns], names=table.column_names)


def _read_csv(block: bytes, ref: FileRef) -> pa.Table:
    columns = ref.dataset.columns
    wanted = [c for c in columns if c in _TYPES]
    if not block.strip():
        return pa.schema([(c, _TYPES[c]) for c in wanted]).empty_table()
    # pyarrow reads its own NativeFile (here without a copy); the stubs accept only Python's IO.
    return pa_csv.read_csv(
        pa.BufferReader(block),  # type: ignore[arg-type]
        read_options=pa_csv.ReadOptions(column_names=list(columns), block_size=len(block) + 1),
        parse_options=pa_csv.ParseOptions(newlines_in_values=False),
        convert_options=pa_csv.ConvertOptions(column_types={c: _TYPES[c] for c in wanted}, include_columns=wanted,
                                              strings_can_be_null=False, quoted_strings_can_be_null=False,
                                              true_values=_TRUE, false_values=_FALSE))


def _first_bad_line(block: bytes, ref: FileRef, first_line: int) -> tuple[int, str]:
    """The first line of a block that Arrow refuses, by halving (errors only: a few dozen parses)."""
    lines = block.rstrip(b"\n").split(b"\n")
    low, high = 0, len(lines)  # the first bad line is in lines[low:high]
    while high - low > 1:
        middle = (low + high) // 2
        try:
            _read_csv(b"\n".join(lines[low:middle]) + b"\n", ref)
        except pa.ArrowInvalid:
            high = middle
        else:
            low = middle
    return first_line + low, lines[low].decode("ascii", "replace").rstrip("\r")


class _Checker:
    """The rules of a file, batch after batch; keeps where the previous batch ended."""

    def __init__(self, ref: FileRef, first_line: int) -> None:
        self.ref = ref
        self.line = first_line  # the line of the next row
        self.start_us = (ref.period.start - _EPOCH).days * _DAY_US
        self.end_us = (ref.period.end - _EPOCH).days * _DAY_US
        self.scale = 1 if ref.period.micros else 1000
        self.last_id: int | None = None
        self.last_us: int | None = None

    def check(self, batch: pa.RecordBatch) -> Iterator[tuple[date, pa.Table]]:
        rows = batch.num_rows
        if rows == 0:
            return
        for column in batch.columns:
            if column.null_count:
                self._fail(_first(pc.is_null(column)), "an empty field")
        ids: pa.Array[Any] = batch.column("id")
        raw: pa.Array[Any] = batch.column("time")
        times = pc.multiply(raw, pa.scalar(self.scale, pa.int64())) if self.scale != 1 else raw
        outside = pc.or_(pc.less(times, pa.scalar(self.start_us, pa.int64())),
                         pc.greater_equal(times, pa.scalar(self.end_us, pa.int64())))
        if pc.any(outside).as_py():
            at = _first(outside)
            self._fail(at, f"time {raw[at].as_py()} is outside the file's period {self.ref.period.label}")
        self._increasing(ids, self.last_id, strict=True, what="trade id")
        self._increasing(times, self.last_us, strict=False, what="time")
        for name in ("price", "qty"):
            positive = pc.greater(batch.column(name), pa.scalar(0, PRICE))
            if not pc.all(positive).as_py():
                self._fail(_first(pc.invert(positive)), f"{name} is not above zero")
        if self.ref.dataset is AGG_TRADES:
            ordered = pc.less_equal(batch.column("first_id"), batch.column("last_id"))
            if not pc.all(ordered).as_py():
                self._fail(_first(pc.invert(ordered)), "its first trade id is above its last")
        self.last_id, self.last_us = ids[-1].as_py(), times[-1].as_py()
        yield from self._days(batch, times)
        self.line += rows

    def _increasing(self, values: pa.Array[Any], before: int | None, *, strict: bool, what: str) -> None:
        if before is not None and (values[0].as_py() <= before if strict else values[0].as_py() < before):
            self._fail(0, f"{what} {values[0].as_py()} comes after {before}")
        if len(values) < 2:
            return
        steps = pc.subtract(values.slice(1), values.slice(0, len(values) - 1))
        zero = pa.scalar(0, pa.int64())
        bad = pc.less_equal(steps, zero) if strict else pc.less(steps, zero)
        if pc.any(bad).as_py():
            at = _first(bad) + 1
            self._fail(at, f"{what} {values[at].as_py()} comes after {values[at - 1].as_py()}")

    def _days(self, batch: pa.RecordBatch, times: pa.Array[Any]) -> Iterator[tuple[date, pa.Table]]:
        days = pc.divide(times, pa.scalar(_DAY_US, pa.int64()))
        runs = pc.run_end_encode(days)  # type: ignore[attr-defined]  # in pyarrow since 13; not in its stubs
        start = 0
        for end, value in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
            yield _EPOCH + timedelta(days=value), self._table(batch.slice(start, end - start),
                                                             times.slice(start, end - start))
            start = end

    def _table(self, batch: pa.RecordBatch, times: pa.Array[Any]) -> pa.Table:
        stamp = times.cast(TIME)
        rows = batch.num_rows
        agg = self.ref.dataset is AGG_TRADES
        nothing = pa.nulls(rows, pa.int64())
        return pa.Table.from_arrays([
            batch.column("id"), batch.column("price"), batch.column("qty"), stamp, stamp,
            batch.column("isBuyerMaker"), pa.nulls(rows, TIME),
            batch.column("first_id") if agg else nothing, batch.column("last_id") if agg else nothing,
        ], schema=FILE_SCHEMA)

    def _fail(self, index: int, why: str) -> None:
        raise ArchiveFormatError(f"{self.ref.member}: line {self.line + index:,}: {why}")


def _first(mask: Any) -> int:
    """The index of the first true value of a boolean array that has one."""
    return int(pc.index(mask, pa.scalar(True)).as_py())
