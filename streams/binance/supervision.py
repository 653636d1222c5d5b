"""Supervised background tasks: nothing a stream starts may die unseen (docs/design.md, "Nothing fails silently").

`asyncio.TaskGroup`'s rule — an error in one task ends them all and reaches the owner — for owners whose
tasks come and go over a long life (a backfill per gap, a reader per connection), where one `async with`
block around everything does not fit. The first unexpected exception is logged once with its traceback
(the stream id comes from the logging context the tasks inherit), counted, and handed to the owner,
which stops. Expected errors are handled inside the tasks themselves; whatever reaches here is a bug or
something nobody foresaw, and a stream that is restarted with resume is better than one half alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TaskFailed(Exception):
    """A supervised task ended with an unexpected error (already logged with its traceback)."""

    def __init__(self, task_name: str, error: BaseException) -> None:
        super().__init__(f"{task_name} failed: {type(error).__name__}: {error}")
        self.task_name = task_name
        self.error = error


class Supervisor:
    """Keeps a reference to every task it starts; reports the first failure to `on_failure`."""

    def __init__(self, on_failure: Callable[[TaskFailed], None]) -> None:
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failure: TaskFailed | None = None
        self.failures = 0

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    @property
    def running(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        """Cancel every task still running (they end at their next await)."""
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def aclose(self, timeout: float = 2.0) -> None:
        """Cancel every task and wait up to `timeout` s for them to end."""
        self.cancel()
        others = self._tasks - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout)
        if others := self._tasks - {asyncio.current_task()}:
            logger.warning("%d background tasks did not end within %.1f s of being cancelled: %s",
                           len(others), timeout, sorted(t.get_name() for t in others))

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        self.failures += 1
        if self.failure is not None:  # the owner is stopping already; the first one was reported
            logger.debug("%s also failed while stopping: %r", task.get_name(), error)
            return
        self.failure = TaskFailed(task.get_name(), error)
        logger.error("%s failed; stopping the stream: %s: %s", task.get_name(), type(error).__name__, error,
                     exc_info=error)
        self._on_failure(self.failure)
