"""Days of the dataset exported as files for other tools: one file per stream and UTC day, read through the
dataset (the lake's sealed days and the database's hot days alike).

- Layout: the lake's own Hive layout by default (`<out>/trades/market=spot/channel=trade/ticker_symbol=BTCUSDT/
  date=2026-11-01/<file>`), which DuckDB, polars and pyarrow read with the partitions as columns; all files
  in `<out>` itself with `flat`.
- `parquet`: the lake's day file, in the one vocabulary (streams.lake.schema.FILE_SCHEMA; the stream's columns
  are the partition folders, and the file's metadata names them too). A day sealed complete is its lake file
  copied byte for byte, its SHA-256 checked against the manifest on the way (a copy that differs is refused:
  the scrub rebuilds such a file); any other day is encoded as sealing would encode it.
- `csv`: the Binance spot archive's own CSV layout, gzipped (streams.formats.archive_csv), for tools written
  against the archive: `<SYMBOL>-trades-<day>.csv.gz`, or `-aggTrades-` for aggregate trades.

A file is written whole under a fresh name and moved into place (streams.outfiles); an existing file of the
same name is replaced.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from streams import dataset, formats, tiers
from streams.binance.protocol import AGG_TRADE
from streams.lake.files import encode
from streams.lake.layout import DayKey
from streams.models import SealedDay
from streams.outfiles import replacing, write_whole

FORMATS: Final = ("parquet", "csv")
CSV_MARKETS: Final = ("spot",)  # the archive's futures CSVs have other columns and a header: not written here
_COPY_BYTES: Final = 8 << 20
_GZIP_LEVEL: Final = 3  # ~3x smaller than the text at a few times the speed of gzip's default 9
_GZIP_WBITS: Final = 31  # zlib's gzip container (header without a name or a time: the same bytes every run)


class ExportError(Exception):
    """A day that cannot be exported as asked (its sealed file differs from its manifest)."""


@dataclass(frozen=True)
class DayExport:
    path: Path | None  # None: nothing stored that day, no file written
    rows: int
    copied: bool = False  # the lake's sealed file, byte for byte


def file_name(key: DayKey, fmt: str) -> str:
    if fmt == "parquet":
        return key.file_name
    kind = "aggTrades" if key.channel == AGG_TRADE else "trades"
    return f"{key.symbol}-{kind}-{key.day.isoformat()}.csv.gz"


def target(out: Path, key: DayKey, fmt: str, *, flat: bool = False) -> Path:
    return out / file_name(key, fmt) if flat else out / key.folder / file_name(key, fmt)


def sealed_whole(sealed: SealedDay | None) -> bool:
    """The day's lake file is the day, complete and not damaged: what the dataset reads it from alone."""
    return sealed is not None and sealed.complete and sealed.state == SealedDay.State.SEALED


def export_day(key: DayKey, fmt: str, out: Path, *, flat: bool = False,
               sealed: SealedDay | None = None) -> DayExport:
    """Write one day of a stream under `out`; `sealed` is its manifest, if any (looked up when not given)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv" and key.market not in CSV_MARKETS:
        raise ExportError(f"{key}: the archive's CSV layout is written for the spot market only")
    sealed = sealed if sealed is not None else tiers.sealed_day(key)
    path = target(out, key, fmt, flat=flat)
    if fmt == "parquet" and sealed_whole(sealed):
        assert sealed is not None
        copy_sealed(key, sealed, path)
        return DayExport(path, sealed.rows, copied=True)
    table = dataset.day_table(key, sealed)
    if table.num_rows == 0:
        return DayExport(None, 0)
    if fmt == "parquet":
        buffer, _ = encode(table, key, {"source": "export"})
        write_whole(path, [memoryview(buffer)])
    else:
        write_whole(path, _gzipped(formats.archive_csv_chunks(table, key.day, key.channel)))
    return DayExport(path, table.num_rows)


def copy_sealed(key: DayKey, sealed: SealedDay, path: Path) -> None:
    """The day's lake file copied to `path`, checked against its manifest before it is put in place."""
    lake = tiers.lake()
    digest, size = hashlib.sha256(), 0
    with replacing(path) as out:
        try:
            with lake.filesystem.open_input_stream(lake.full_path(key.path)) as source:
                while chunk := source.read(_COPY_BYTES):
                    digest.update(chunk)
                    size += out.write(chunk)
        except FileNotFoundError:
            raise ExportError(f"{key}: the lake's file is missing: not exported; the scrub (or coverage --recheck)"
                              " marks it damaged and rebuilds it") from None
        if digest.hexdigest() != sealed.sha256 or size != sealed.bytes:
            raise ExportError(f"{key}: the lake's file differs from its manifest (SHA-256 {digest.hexdigest()[:16]}…,"
                              f" {size} bytes; sealed as {sealed.sha256[:16]}…, {sealed.bytes} bytes): not exported;"
                              " the scrub (or coverage --recheck) marks it damaged and rebuilds it")


def _gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    for chunk in chunks:
        yield compressor.compress(chunk)
    yield compressor.flush()
