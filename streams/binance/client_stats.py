"""What the stream client's connections have done, over all of them (read from them when asked)."""

from __future__ import annotations

from collections import deque

from streams.binance.slot import ConnectionSlot


class ClientStats:
    """Over every connection of the client (the connection counts are read from them when asked)."""

    def __init__(self, slots: list[ConnectionSlot]) -> None:
        self._slots = slots
        self.final_state: str | None = None   # "stopped" or "failed" once the client has ended
        self.parse_errors = 0
        self.dead_letters: deque[tuple[float, str, str]] = deque(maxlen=50)
        self.task_failures = 0  # background tasks that ended with an unexpected error (each ends the client)

    @property
    def state(self) -> str:
        if self.final_state is not None:
            return self.final_state
        states = {slot.state for slot in self._slots}
        if not states:
            return "starting"
        return states.pop() if len(states) == 1 else ("connected" if states <= {"connected", "rotating", "idle"}
                                                     else sorted(states - {"connected", "idle"})[0])

    @property
    def connection_attempts(self) -> int:
        return sum(slot.connection_attempts for slot in self._slots)

    @property
    def reconnects(self) -> int:
        return sum(slot.reconnects for slot in self._slots)

    @property
    def rotations(self) -> int:
        return sum(slot.rotations for slot in self._slots)

    @property
    def messages(self) -> int:
        """Frames read so far, by every connection."""
        return sum(slot.frames for slot in self._slots)

    @property
    def probes(self) -> int:
        return sum(slot.probes for slot in self._slots)

    @property
    def connections(self) -> int:
        return sum(1 for slot in self._slots if slot.state in ("connected", "rotating"))

    @property
    def connected_since(self) -> float | None:
        """Wall-clock time the connection in use opened (a client of one connection)."""
        primary = self._slots[0].primary if len(self._slots) == 1 else None
        return primary.opened_wall if primary is not None and self._slots[0].state == "connected" else None
