"""Change notices for live pages: "something about this topic changed, look again".

Listeners get an event that is set on every change; they read the current state
themselves, so a burst of changes costs one update, never a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Hashable, Iterator


# The topic of a listener that hears of every change (a worker's report to the front).
ANY = "any change"


class Bulletin:
    def __init__(self) -> None:
        self._listeners: dict[Hashable, set[asyncio.Event]] = defaultdict(set)
        # Set when the server stops: listeners are woken to end their streams.
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for listeners in self._listeners.values():
            for event in listeners:
                event.set()

    def notify(self, topic: Hashable) -> None:
        for event in self._listeners.get(topic, ()):
            event.set()
        for event in self._listeners.get(ANY, ()):
            event.set()

    @contextlib.contextmanager
    def listen(self, topic: Hashable) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        event.set()  # the first read is always due
        self._listeners[topic].add(event)
        try:
            yield event
        finally:
            listeners = self._listeners.get(topic)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    del self._listeners[topic]

    @property
    def listening(self) -> int:
        return sum(len(v) for v in self._listeners.values())
