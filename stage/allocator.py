"""Memory that departed viewers freed goes back to the system (glibc's malloc_trim).

A visit allocates native memory from C's malloc: OpenSSL's DTLS state and certificate,
libsrtp's sessions, and every Python object over 512 bytes, such as each RTP packet.
glibc returns freed memory to the system only from the top of a heap, so a few
long-lived allocations above the freed ones keep them resident: while viewers come
and go, RSS only climbs. The soak of issue 3 (bench/README.md) found no Python objects
kept per visit, yet RSS grew 1.5 MB a minute and stayed 50 MB above the publisher alone
after everyone left, 30 MB of it free chunks in glibc's heaps. `malloc_trim(0)` hands
the free pages inside the heaps back: called every 10 s in the same soak, it took
0.2 ms (median; 25 ms at most), and the slope fell to 0.16 MB a minute.

The call runs in a thread of its own, off the event loop (ctypes lets go of the GIL
for it). Where the C library has no malloc_trim (musl, macOS) nothing is done.
What stays is pymalloc's: arenas of Python objects are given back only when entirely
empty, and the ~22 MB of them that the churn left part-used are out of reach here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import AsyncIterator

from aiohttp import web

logger = logging.getLogger(__name__)

TRIM_INTERVAL = 10.0


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class Trimmer:
    """A thread that trims the C heaps every `interval` seconds until stopped."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self.trims = 0
        self._trim = _malloc_trim()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def start(self) -> None:
        if self._trim is None:
            logger.info("allocator: no malloc_trim in this C library, not trimming")
            return
        self._thread = threading.Thread(target=self._run, name="malloc-trim")
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._trim(0)
            self.trims += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


async def trimming(app: web.Application) -> AsyncIterator[None]:
    """For `cleanup_ctx`: trim while the app runs."""
    trimmer = Trimmer()
    trimmer.start()
    yield
    trimmer.stop()
