"""The transient errors of a streams process (Redis away): counted, shown on every stream, logged once a run."""

from __future__ import annotations

import logging

from streams.failures import describe

logger = logging.getLogger(__name__)


class ErrorRecorder:
    """What failed and was retried, for every stream of the process: `count`, and the `last` one in words.

    A run of failures is logged once, when it begins, and once more when it ends (`recovered`)."""

    def __init__(self) -> None:
        self.count = 0
        self.last = ""
        self._run = 0

    def note(self, what: str, exc: BaseException) -> None:
        self.count += 1
        self.last = f"{what}: {describe(exc)}"
        self._run += 1
        if self._run == 1:
            logger.warning("%s failed (%s); retrying", what, describe(exc))

    def recovered(self) -> None:
        if self._run:
            logger.info("recovered after %d failed attempts (%s)", self._run, self.last)
            self._run = 0
