"""Downloads from Binance's archive, bounded: every file has a size cap, a deadline and a minimum byte rate,
so that a server that trickles one byte every 20 seconds, or sends more than any file of the archive holds,
is given up on in bounded time instead of holding an import (and the audit pass that runs it) for minutes.

A transfer that fails (the network, a 5xx) is tried again on the one retry schedule; a 404 is an answer
(the file is not published); a transfer too slow, too long or too large is refused with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import httpx

from streams.binance.backoff import RETRY
from streams.binance.errors import ExchangeUnavailable, RestError, retry_delay

logger = logging.getLogger(__name__)

_CHECKSUM_BYTES = 4096  # `<64 hex>  <file name>\n`: a CHECKSUM file is about 100 bytes


class DownloadRefused(Exception):
    """The archive's answer broke a bound (size, deadline, byte rate): nothing of it is used."""


@dataclass(frozen=True)
class Bounds:
    max_bytes: int = 16 << 30       # the busiest symbol's monthly trades zip is a few GB
    deadline: float = 3600.0        # s for one file, whatever its size
    min_rate: float = 50_000.0      # bytes/s, measured over each `rate_window`
    rate_window: float = 30.0       # s
    connect_timeout: float = 10.0


class Downloader:
    """GETs of the archive's files over one HTTP client (keep-alive), each within `bounds`."""

    def __init__(self, bounds: Bounds | None = None) -> None:
        self.bounds = bounds or Bounds()
        self._http = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(
            self.bounds.rate_window, connect=self.bounds.connect_timeout))

    def close(self) -> None:
        self._http.close()

    def text(self, url: str) -> str | None:
        """A small file's text (a CHECKSUM), or None when the archive has no such file (404)."""
        with self._get(url) as response:
            if response.status_code == 404:
                return None
            data = self._receive(url, response, _CHECKSUM_BYTES, None)
            return data.decode("ascii", "replace")

    def file(self, url: str, sink: IO[bytes]) -> str | None:
        """Download into `sink` (emptied first); returns the SHA-256 of what was written, or None (404)."""
        with self._get(url) as response:
            if response.status_code == 404:
                return None
            sink.seek(0)
            sink.truncate()
            digest = hashlib.sha256()
            self._receive(url, response, self.bounds.max_bytes, (sink, digest))
            sink.flush()
            return digest.hexdigest()

    def _receive(self, url: str, response: httpx.Response, cap: int,
                 into: tuple[IO[bytes], hashlib._Hash] | None) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise DownloadRefused(f"GET {url}: {int(declared):,} bytes announced, over the {cap:,} allowed")
        started = window_start = time.monotonic()
        total = window_bytes = 0
        kept = bytearray()
        for block in response.iter_raw():  # as it arrives: a trickle is measured, not waited for
            total += len(block)
            window_bytes += len(block)
            if total > cap:
                raise DownloadRefused(f"GET {url}: more than {cap:,} bytes")
            if into is None:
                kept += block
            else:
                into[0].write(block)
                into[1].update(block)
            now = time.monotonic()
            if now - started > self.bounds.deadline:
                raise DownloadRefused(f"GET {url}: not done within {self.bounds.deadline:.0f} s ({total:,} bytes)")
            if now - window_start >= self.bounds.rate_window:
                rate = window_bytes / (now - window_start)
                if rate < self.bounds.min_rate:
                    raise DownloadRefused(f"GET {url}: {rate:,.0f} bytes/s over the last {now - window_start:.0f} "
                                          f"s, under the {self.bounds.min_rate:,.0f} required")
                window_start, window_bytes = now, 0
        return bytes(kept)

    @contextlib.contextmanager
    def _get(self, url: str) -> Iterator[httpx.Response]:
        """A 200 or 404 response (its body streamed), after retries of network errors and 5xx."""
        backoff = RETRY["archive download"].backoff()
        while True:
            try:
                response = self._http.send(self._http.build_request("GET", url), stream=True)
                if response.status_code not in {200, 404}:
                    response.close()
                    cls = ExchangeUnavailable if response.status_code >= 500 else RestError
                    raise cls(response.status_code, f"GET {url} answered {response.status_code}")
                break
            except (httpx.TransportError, RestError) as exc:
                error = exc if isinstance(exc, RestError) else ExchangeUnavailable(0, f"GET {url}: {exc}")
                delay = retry_delay(error, backoff, max_wait=60.0)
                if delay is None:
                    raise error from exc
                logger.warning("%s; retry %d in %.1f s", error, backoff.attempt, delay)
                time.sleep(delay)
        try:
            yield response
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise ExchangeUnavailable(0, f"GET {url}: {exc}") from exc
        finally:
            response.close()
