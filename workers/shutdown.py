"""The worker process is shutting down: a signal that wakes the runtime's loop at once (no polling)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ShutdownSignal:
    """Set from the worker's shutdown signal handler; every subscriber is called, from that thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: set[Callable[[], None]] = set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the signalling thread) when the signal is set, or now if it is."""
        with self._lock:
            self._callbacks.add(callback)
        if self._event.is_set():
            callback()
