"""Day files: written whole or not at all, read back, and verified against what was recorded when written.

A day is encoded in memory (a day of the busiest symbol is tens of MB of Parquet), hashed, then put in
place in one step: on a local disk written to a temporary name in the day's folder, fsynced, renamed over
the day's file and the folder fsynced, so that a crash leaves the old file or the new one; on an object
store (s3://...) uploaded to the final key, which the store makes visible only once complete. Readers never
see a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.lake.layout import DayKey, Lake, key_of
from streams.lake.schema import FILE_SCHEMA, ROW_GROUP_ROWS, WRITER_OPTIONS


class LakeError(Exception):
    """A day that cannot be written as given (ids out of order, the wrong columns)."""


@dataclass(frozen=True)
class DayFile:
    """What a day file holds, recorded when it is written and checked by every verification."""

    rows: int
    first_id: int | None
    last_id: int | None
    sha256: str
    bytes: int


def id_bounds(table: pa.Table) -> tuple[int | None, int | None]:
    if table.num_rows == 0:
        return None, None
    ids = table.column("trade_id")
    return int(ids[0].as_py()), int(ids[-1].as_py())


def increasing(ids: pa.ChunkedArray[Any] | pa.Array[Any]) -> bool:
    """Whether every id is greater than the one before it (sorted, no id twice)."""
    flat = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if len(flat) < 2:
        return True
    return bool(pc.all(pc.greater(flat.slice(1), flat.slice(0, len(flat) - 1))).as_py())


def consecutive(table: pa.Table) -> bool:
    """Ids increasing by one from the first to the last: no hole inside the day."""
    first, last = id_bounds(table)
    return first is None or (last is not None and last - first + 1 == table.num_rows and increasing(
        table.column("trade_id")))


def encode(table: pa.Table, key: DayKey, metadata: Mapping[str, str] | None = None) -> tuple[pa.Buffer, DayFile]:
    """The day's Parquet bytes and what they hold. `table` must have FILE_SCHEMA's columns, ids increasing."""
    table = table.select(list(FILE_SCHEMA.names)).cast(FILE_SCHEMA)
    if not increasing(table.column("trade_id")):
        raise LakeError(f"{key}: trade ids are not strictly increasing")
    first, last = id_bounds(table)
    meta = {"market": key.market, "ticker_symbol": key.symbol, "channel": key.channel, "date": key.day.isoformat(),
            "rows": str(table.num_rows), "first_trade_id": str(first), "last_trade_id": str(last),
            **(metadata or {})}
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, **WRITER_OPTIONS)
    buffer = sink.getvalue()
    return buffer, DayFile(table.num_rows, first, last, hashlib.sha256(buffer).hexdigest(), buffer.size)


@dataclass(frozen=True)
class Staged:
    """A day file written under a temporary name, not yet in place (`place`) or given up (`discard`)."""

    key: DayKey
    temporary: str  # a local path: in the day's folder for a local lake, in the system's temporary folder else
    day_file: DayFile


def write_day(lake: Lake, key: DayKey, table: pa.Table, metadata: Mapping[str, str] | None = None) -> DayFile:
    """Encode and put the day in place (replacing the day's file, if any, in one step)."""
    staged = stage_day(lake, key, table, metadata)
    place(lake, staged)
    return staged.day_file


def stage_day(lake: Lake, key: DayKey, table: pa.Table, metadata: Mapping[str, str] | None = None) -> Staged:
    """Encode the day and write it, fsynced, under a temporary name that no reader looks at (a dot first)."""
    buffer, day_file = encode(table, key, metadata)
    if lake.local:
        folder = lake.full_path(key.folder)
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=folder)
    else:
        descriptor, temporary = tempfile.mkstemp(prefix="lake-", suffix=".parquet")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(memoryview(buffer))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return Staged(key, temporary, day_file)


def place(lake: Lake, staged: Staged) -> None:
    """Put a staged day in place in one step: a rename on a local disk (the folder fsynced after), an upload
    that the object store shows only once complete elsewhere."""
    path = lake.full_path(staged.key.path)
    if not lake.local:
        lake.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with open(staged.temporary, "rb") as source, lake.filesystem.open_output_stream(path) as out:
            while block := source.read(1 << 20):
                out.write(block)
        discard(staged)
        return
    os.replace(staged.temporary, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def discard(staged: Staged) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged.temporary)


def read_day(lake: Lake, key: DayKey, columns: Sequence[str] | None = None) -> pa.Table:
    """The day's rows (FILE_SCHEMA, or `columns` of it)."""
    return pq.read_table(lake.full_path(key.path), filesystem=lake.filesystem,
                         columns=list(columns) if columns else None, schema=FILE_SCHEMA)


def exists(lake: Lake, key: DayKey) -> bool:
    return lake.filesystem.get_file_info(lake.full_path(key.path)).type == pafs.FileType.File


def remove_day(lake: Lake, key: DayKey) -> None:
    with contextlib.suppress(FileNotFoundError):
        lake.filesystem.delete_file(lake.full_path(key.path))


def file_bytes(lake: Lake, key: DayKey) -> bytes:
    with lake.filesystem.open_input_stream(lake.full_path(key.path)) as source:
        return bytes(source.readall())


def verify_day(lake: Lake, key: DayKey, expected: DayFile, *, complete: bool) -> list[str]:
    """What is wrong with the day's file against `expected` (empty: nothing). A complete day must also have
    consecutive ids. Reads the whole file once."""
    try:
        data = file_bytes(lake, key)
    except FileNotFoundError:
        return ["the file is missing"]
    except OSError as exc:
        return [f"the file cannot be read: {exc}"]
    problems = []
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256 or len(data) != expected.bytes:
        problems.append(f"its SHA-256 is {digest[:16]}… ({len(data)} bytes), sealed as "
                        f"{expected.sha256[:16]}… ({expected.bytes} bytes)")
    try:
        ids = pq.read_table(pa.BufferReader(data), columns=["trade_id"]).column("trade_id")
    except (pa.ArrowException, OSError) as exc:
        return [*problems, f"it is not a readable Parquet file: {exc}"]
    first, last = (None, None) if len(ids) == 0 else (int(ids[0].as_py()), int(ids[-1].as_py()))
    if (len(ids), first, last) != (expected.rows, expected.first_id, expected.last_id):
        problems.append(f"it holds {len(ids)} rows, ids {first}..{last}; sealed with {expected.rows} rows, ids "
                        f"{expected.first_id}..{expected.last_id}")
    if not increasing(ids):
        problems.append("its trade ids are not strictly increasing")
    elif complete and first is not None and last is not None and last - first + 1 != len(ids):
        problems.append(f"{last - first + 1 - len(ids)} ids are missing inside a day sealed complete")
    return problems


def day_keys(lake: Lake) -> Iterator[DayKey]:
    """Every day file found in the lake (a scan: for finding files the manifest does not know)."""
    selector = pafs.FileSelector(lake.trades_root, recursive=True, allow_not_found=True)
    for info in lake.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File and (key := key_of(info.path)) is not None:
            yield key
