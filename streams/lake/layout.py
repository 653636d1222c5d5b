"""Where a day lives in the lake: `<root>/trades/market=spot/channel=trade/ticker_symbol=BTCUSDT/date=2026-11-01/
spot-BTCUSDT-trade-2026-11-01.parquet`, on any filesystem pyarrow.fs understands (a local folder, s3://...).

The partition values are in the path, not in the file (the Hive convention: a reader that asks for
`hive_partitioning` gets them as columns); the file's own key-value metadata names them too, so that a file
copied out of the lake still says what it holds. The file name is fixed per day: a day sealed again replaces
its file in one step, so a reader sees the old day or the new one, never both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow.fs as pafs

MARKETS: Final = ("spot", "um", "cm")
TRADES_DIR: Final = "trades"
_DAY_PATH = re.compile(r"market=(?P<market>[a-z]+)/channel=(?P<channel>[A-Za-z]+)/ticker_symbol=(?P<symbol>[^/]+)/"
                       r"date=(?P<day>\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")


@dataclass(frozen=True, order=True)
class DayKey:
    """One stream's UTC day: the unit the lake stores, seals and verifies."""

    market: str
    symbol: str
    channel: str
    day: date

    @property
    def folder(self) -> str:
        return (f"{TRADES_DIR}/market={self.market}/channel={self.channel}/ticker_symbol={self.symbol}/"
                f"date={self.day.isoformat()}")

    @property
    def file_name(self) -> str:
        return f"{self.market}-{self.symbol}-{self.channel}-{self.day.isoformat()}.parquet"

    @property
    def path(self) -> str:
        """The file's path relative to the lake's root."""
        return f"{self.folder}/{self.file_name}"

    def __str__(self) -> str:
        return f"{self.market} {self.symbol} {self.channel} {self.day.isoformat()}"


def key_of(path: str) -> DayKey | None:
    """The day a lake path holds, or None for a path that is not a day file."""
    match = _DAY_PATH.search(path)
    if match is None:
        return None
    return DayKey(match["market"], match["symbol"], match["channel"], date.fromisoformat(match["day"]))


@dataclass(frozen=True)
class Lake:
    """A lake at `url`: a folder (relative paths are taken from `base`) or any URI pyarrow.fs knows."""

    filesystem: pafs.FileSystem
    root: str

    @classmethod
    def at(cls, url: str, base: Path | None = None) -> Lake:
        if "://" not in url:
            folder = Path(url)
            if not folder.is_absolute():
                folder = (base or Path.cwd()) / folder
            return cls(pafs.LocalFileSystem(), str(folder.resolve()))
        filesystem, root = pafs.FileSystem.from_uri(url)
        return cls(filesystem, root.rstrip("/"))

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def full_path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    @property
    def trades_root(self) -> str:
        return self.full_path(TRADES_DIR)

    def uri(self) -> str:
        """What a reader outside the project passes to DuckDB or polars (a local lake: its folder)."""
        return self.root if self.local else f"{self.filesystem.type_name}://{self.root}"
