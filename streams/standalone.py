"""`python -m streams.standalone [symbol] [channel] [limit]`: print trades as JSON lines, without Django.

Honours BINANCE_WS_URL and BINANCE_REST_URL. A bad argument, a bad URL or an unknown symbol gets a
one-line error on stderr naming the value, and exit code 2; trades go to stdout, one JSON object per
line, with the seed's field names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

import orjson

from streams.binance.backoff import RETRY
from streams.binance.client import ClientConfig, StreamClient
from streams.binance.errors import InvalidStreamName, StreamError, UnknownSymbol
from streams.binance.inputs import HTTP_SCHEMES, WS_SCHEMES, endpoint_url, seconds, whole_number
from streams.binance.protocol import Trade, normalize_channel, normalize_symbol
from streams.binance.rest import BinanceRest
from streams.binance.waiting import Stopped, unless_stopped

logger = logging.getLogger("streams.standalone")

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
EXIT_USAGE = 2
MAX_BATCH = 5_000  # trades per write at most (~1 MB of lines)
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


class UsageError(Exception):
    """A bad command-line argument."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streams.standalone", description=__doc__)
    parser.add_argument("symbol", nargs="?", default="btcusdt", help="symbol, e.g. btcusdt (default)")
    parser.add_argument("channel", nargs="?", default="trade", help="trade (default) or aggTrade")
    parser.add_argument("limit", nargs="?", default="10", help="trades to print, 0 for no limit (default 10)")
    parser.add_argument("--wait-for-exchange", default="0", metavar="SECONDS",
                        help="keep trying to reach the exchange this long before giving up")
    args = parser.parse_args(argv)
    try:
        args.symbol = normalize_symbol(args.symbol)
        args.channel = normalize_channel(args.channel)
    except InvalidStreamName as exc:
        raise UsageError(str(exc)) from None
    try:
        limit = whole_number(args.limit)
    except ValueError:
        limit = -1
    if limit < 0:
        raise UsageError(f"invalid limit {args.limit!r}: expected a whole number >= 0")
    args.limit = limit
    try:
        args.wait_for_exchange = seconds(args.wait_for_exchange)
    except ValueError as exc:
        raise UsageError(f"invalid --wait-for-exchange: {exc}") from None
    return args


def endpoints(environ: dict[str, str]) -> tuple[str, str]:
    """(WebSocket URL, REST URL) from BINANCE_WS_URL and BINANCE_REST_URL, checked as the settings do."""
    try:
        ws_url = endpoint_url(environ.get("BINANCE_WS_URL", DEFAULT_WS_URL), WS_SCHEMES)
    except ValueError as exc:
        raise UsageError(f"BINANCE_WS_URL: {exc}") from None
    try:
        rest_url = endpoint_url(environ.get("BINANCE_REST_URL", DEFAULT_REST_URL), HTTP_SCHEMES)
    except ValueError as exc:
        raise UsageError(f"BINANCE_REST_URL: {exc}") from None
    return ws_url, rest_url


async def collect(args: argparse.Namespace, ws_url: str, rest_url: str) -> int:
    async with BinanceRest(rest_url, retry=RETRY["symbol check"]) as rest:
        await rest.validate_symbol(args.symbol, wait=args.wait_for_exchange)
    config = ClientConfig.for_streams(ws_url, rest_url, [(args.symbol, args.channel)])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    printed, stdout = 0, sys.stdout.fileno()
    async with StreamClient(config) as client:
        while not args.limit or printed < args.limit:
            wanted = min(MAX_BATCH, args.limit - printed) if args.limit else MAX_BATCH
            # Everything the client has ready, in one write: a burst goes out in blocks, and a quiet market's
            # trade at once (the next call waits only when nothing is ready, after this block is out).
            batch = await unless_stopped(client.next_batch(wanted), stop)
            if isinstance(batch, Stopped) or not batch:
                break
            write_all(stdout, json_lines(batch))
            printed += len(batch)
    return 0


def write_all(fd: int, data: bytearray) -> None:
    """Write all of `data` to `fd` now, unbuffered; a write cut short by a signal goes on where it stopped.
    (Not sys.stdout.buffer: under `python -u` or PYTHONUNBUFFERED it is a raw file whose write may be partial.)"""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def json_lines(trades: list[Trade]) -> bytearray:
    """One JSON object per trade and line, with the seed's field names (`Trade.as_record`)."""
    lines = bytearray()
    for trade in trades:  # appended one by one: a list of orjson's outputs, then joined, costs 3 times as much
        lines += _dumps(trade.as_record(), option=_NEWLINE)
    return lines


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return asyncio.run(collect(args, *endpoints(dict(os.environ))))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnknownSymbol as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamError as exc:
        print(f"error: cannot collect: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
