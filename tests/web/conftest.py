"""Fixtures of the web side's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_kept_candles() -> Iterator[None]:
    """The live page's candles are kept per process (web.candles): each test reads its own database afresh."""
    from web import candles, pages

    candles.forget()
    pages.forget_enabled()
    yield
    candles.forget()
    pages.forget_enabled()
