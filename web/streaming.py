"""Streamed HTTP bodies that stay streamed under ASGI (the Procfile's uvicorn) as under WSGI.

Django serves a StreamingHttpResponse whose iterator is synchronous by first collecting it whole into a list
under ASGI (with a warning), and an asynchronous one whole under WSGI: a year of trades would be built in
memory before the first byte leaves. So the body is given in the server's own kind: under ASGI an async
iterator that pulls each chunk from the synchronous generator in the request's thread (thread-sensitive: the
generator's database cursor stays on the connection of the thread that opened it), under WSGI the generator
itself.

A failure after the first byte cannot change the status any more: it is logged once with the request, and the
connection is dropped without the chunked body's end, so that the client sees an incomplete transfer rather
than a short file that looks whole.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Generator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse

logger = logging.getLogger(__name__)

Chunks = Generator[bytes, None, None]


def streamed(request: HttpRequest, chunks: Iterator[bytes], content_type: str) -> StreamingHttpResponse:
    """A response whose body is `chunks`, pulled one at a time as the client takes them."""
    guarded = _logged(request, chunks)
    body: Iterator[bytes] | AsyncIterator[bytes] = _pulled(guarded) if isinstance(request, ASGIRequest) else guarded
    response = StreamingHttpResponse(body, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _logged(request: HttpRequest, chunks: Iterator[bytes]) -> Chunks:
    sent = 0
    try:
        for chunk in chunks:
            if chunk:
                sent += len(chunk)
                yield chunk
    except Exception:
        logger.exception("%s: failed after %d bytes sent; the response is cut short", request.get_full_path(), sent)
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _next(chunks: Chunks) -> bytes | None:
    return next(chunks, None)


async def _pulled(chunks: Chunks) -> AsyncIterator[bytes]:
    pull = sync_to_async(_next, thread_sensitive=True)
    try:
        while (chunk := await pull(chunks)) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()
