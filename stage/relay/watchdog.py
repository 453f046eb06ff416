"""A watchdog on a publisher's video jitter buffer: a lost packet must not freeze a show.

aiortc's jitter buffer releases frames strictly in sequence order. When a packet is
lost and retransmission never brings it back (the sender's history is 128 packets, and
a retransmission can be lost too), every later frame waits behind the hole until 512
packets have piled up and the buffer overflows: seconds of frozen video for every
viewer (RELAY-NOTES.md). The watchdog looks a few times a second; when no frame has
come out for STALL_SECONDS while packets wait behind a hole, it empties the buffer
and asks the publisher for a keyframe. Frames that depend on what
was lost are held back by the publisher's tap until that keyframe arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# No frame for this long, with packets waiting behind a hole: give the hole up. Frames
# come 30 times a second and NACK round trips on a sound network take well under
# 100 ms, so a hole this old is not going to be filled.
STALL_SECONDS = 0.5
CHECK_INTERVAL = 0.1


def first_packet_past_hole(buffer) -> int | None:
    """How many slots from the buffer's start to the first packet beyond a hole.

    None when the packets held run unbroken from the start (nothing is stuck: that is
    also how a buffer looks while the publisher is idle, holding its last frame).
    Reads aiortc 1.16's JitterBuffer fields (_origin, _packets, _capacity).
    """
    origin = buffer._origin
    if origin is None:
        return None
    packets, capacity = buffer._packets, buffer._capacity
    hole = False
    for count in range(capacity):
        present = packets[(origin + count) % capacity] is not None
        if not present:
            hole = True
        elif hole:
            return count
    return None


def clear_stuck(buffer) -> int:
    """Empty a buffer stuck behind a hole; returns how many packets were dropped.

    Everything held depends on what was lost, or is cut off from its frame's start,
    so nothing is worth keeping: the tap waits for a keyframe anyway. Skipping only
    the hole instead would leave the backlog to drain one frame per arriving packet,
    which never catches up when frames are a packet each: viewers would stay half a
    second late. The next packet to arrive starts the buffer afresh (aiortc sets
    `_origin` from it), and late retransmissions of older packets are ignored.
    """
    if first_packet_past_hole(buffer) is None:
        return 0
    dropped = sum(packet is not None for packet in buffer._packets)
    buffer._packets[:] = [None] * buffer._capacity
    buffer._origin = None
    return dropped


class StallWatchdog:
    """Watches one video receiver's jitter buffer; `on_stall` runs after each clearing."""

    def __init__(self, name: str, receiver, on_stall: Callable[[], None]) -> None:
        self._name = name
        self._buffer = receiver._RTCRtpReceiver__jitter_buffer
        self._on_stall = on_stall
        self.last_frame_at = time.monotonic()
        self.stalls = 0
        self._timer: asyncio.TimerHandle | None = None

    def frame_released(self) -> None:
        self.last_frame_at = time.monotonic()

    def start(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(CHECK_INTERVAL, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(CHECK_INTERVAL, self._check)
        stalled = time.monotonic() - self.last_frame_at
        if stalled < STALL_SECONDS:
            return
        lost = clear_stuck(self._buffer)
        if not lost:
            return
        self.stalls += 1
        # The next frame to come out may start anywhere; count from now.
        self.last_frame_at = time.monotonic()
        logger.info(
            "%s: video stalled %.1f s behind a lost packet, dropped %d packets",
            self._name,
            stalled,
            lost,
        )
        self._on_stall()
