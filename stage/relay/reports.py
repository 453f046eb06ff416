"""RTCP sender reports for every viewer's outlets, from one timer per event loop.

aiortc's sender runs a task per sender that sleeps 0.5-1.5 s, builds report objects and
sends them through three coroutines: two timers and two task wake-ups a second per
viewer, and as much time per report as a dozen forwarded packets (bench/README.md).
Here one timer looks over all outlets a few times a second and each outlet whose time
has come writes its report itself (outlet.py). Each outlet still reports on average
once a second at a random point in 0.5-1.5 s after its last (RFC 3550 section 6.2),
so reports to many viewers do not go out in one burst.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref

logger = logging.getLogger(__name__)

# How often the outlets are looked over: reports go out up to this late.
TICK = 0.1


def next_interval() -> float:
    return 0.5 + random.random()


class Reports:
    """The outlets of one event loop that send sender reports, and their timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict = {}  # outlet -> monotonic time of its next report
        self._timer: asyncio.TimerHandle | None = None

    def add(self, outlet) -> None:
        self._due[outlet] = time.monotonic() + next_interval()
        if self._timer is None:
            self._timer = self._loop.call_later(TICK, self._tick)

    def discard(self, outlet) -> None:
        self._due.pop(outlet, None)

    def _tick(self) -> None:
        now = time.monotonic()
        due = self._due
        for outlet, at in list(due.items()):
            if at <= now and outlet in due:
                due[outlet] = now + next_interval()
                try:
                    outlet.report()
                except Exception:
                    logger.exception("sender report failed")
        self._timer = self._loop.call_later(TICK, self._tick) if due else None


_by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reports() -> Reports:
    """The running event loop's reports."""
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = Reports(loop)
    return found
