"""The trimmer that hands freed C heap memory back (stage/allocator.py)."""

from __future__ import annotations

import asyncio
import threading
import time

from stage.allocator import Trimmer


def trimming_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "malloc-trim"]


async def test_the_trimmer_trims_until_it_is_stopped():
    trimmer = Trimmer(interval=0.01)
    assert trimmer.available, "this C library has no malloc_trim (not glibc?)"
    trimmer.start()
    try:
        deadline = time.monotonic() + 10
        while trimmer.trims < 3:
            assert time.monotonic() < deadline, f"{trimmer.trims} trims in 10 s"
            await asyncio.sleep(0.01)
    finally:
        trimmer.stop()
    done = trimmer.trims
    await asyncio.sleep(0.05)
    assert trimmer.trims == done
    assert not trimming_threads()


async def test_the_server_trims_while_it_runs(server):
    assert len(trimming_threads()) == 1
