"""A stage hub: one live stage, its current publisher, and everyone it feeds.

Frames arrive on the event loop from the publisher's tap and are handed, still encoded,
to every consumer of their kind: viewer tracks and the recording. Consumers send or
queue at once; nothing here waits.

A video frame goes out in slices of about FAN_OUT_SLICE packets, the event loop
getting a turn between slices. A keyframe is ~25 packets; to 100 viewers that is 2,500
packets, 25-50 ms of the loop on the bench's machine (bench/README.md, probe figures),
and everything that arrived meanwhile used to wait for all of it: Opus packets (audio
jitter the browser answers with a longer audio buffer), the next frame for the viewers
who already had the keyframe, RTCP. Now audio goes out the moment it arrives, and a
frame is sent at once to everyone who has had every frame before it; only the viewers
still waiting for the keyframe get the next frame after it, in order. Who is served
last takes turns.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Protocol

from .frames import MediaFrame
from .packets import PAYLOAD_MAX
from .publisher import Publisher

logger = logging.getLogger(__name__)

# PLIs upstream are coalesced: at most one per interval, however many viewers ask.
KEYFRAME_INTERVAL = 0.3
# While a keyframe is still wanted, ask again this often (a lost keyframe, B15).
KEYFRAME_RETRY = 1.0
# The latest keyframe and the frames after it are kept, so that a newcomer can start
# decoding at once instead of waiting for the publisher to answer a PLI (a round trip,
# an encode and a paced keyframe: most of the time a switch took). Browsers send
# keyframes only when asked, so once the kept run reaches PICTURE_REFRESH frames the
# hub asks for a fresh one. A newcomer's browser shows the kept keyframe at once (the
# outlet asks for no playout delay) and then runs through the rest of the run: at
# most about a second of frames, 30-90 ms of decoding at 640x480-1280x720. The price
# is one extra keyframe a second where the publisher would send none (about 6% more
# bitrate at a fixed quality, measured on the test camera clip); encoders that send
# keyframes every second, as the README asks of OBS, are never asked. Past
# PICTURE_LIMIT (a publisher that ignores PLIs, or 60 fps with a 1 s keyframe
# interval) nothing is kept and newcomers wait for the next keyframe.
PICTURE_REFRESH = 30
PICTURE_LIMIT = 60
# Packets a video fan-out sends before the event loop gets a turn: about 2-3 ms of
# sending at 10-12 µs a packet (the outlet's figure in bench/README.md).
FAN_OUT_SLICE = 200


class Consumer(Protocol):
    def push(self, frame: MediaFrame) -> None: ...


class _FanOut:
    """A video frame and the consumers still to be handed it, in turn."""

    __slots__ = ("frame", "consumers", "packets")

    def __init__(self, frame: MediaFrame, consumers) -> None:
        self.frame = frame
        self.consumers = collections.deque(consumers)
        # What one consumer costs in packets; the exact cut is the outlet's.
        self.packets = max(1, -(-len(frame.data) // PAYLOAD_MAX))


class StageHub:
    def __init__(self, stage_id: str, name: str, publisher: Publisher) -> None:
        self.stage_id = stage_id
        self.name = name
        self.publisher = publisher
        self.viewers: set = set()
        self._consumers: dict[str, set[Consumer]] = {"audio": set(), "video": set()}
        self._keyframe_wanted = False
        self._last_keyframe_request = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._picture: list[MediaFrame] = []
        self._queued: collections.deque[_FanOut] = collections.deque()
        self._fan_out_handle: asyncio.Handle | None = None
        self._turn = 0
        self.ended = False
        self.last_frame_at = time.monotonic()
        publisher.deliver = self._on_frame
        publisher.want_keyframe = self.want_keyframe

    @property
    def watching(self) -> int:
        return len(self.viewers)

    @property
    def video_codec(self) -> str | None:
        return self.publisher.video_codec

    @property
    def h264_profile_level_id(self) -> str | None:
        return self.publisher.h264_profile_level_id

    def replace_publisher(self, publisher: Publisher) -> Publisher:
        """Take frames from a new publisher from now on; returns the old one."""
        old, self.publisher = self.publisher, publisher
        old.deliver = None
        old.want_keyframe = None
        publisher.deliver = self._on_frame
        publisher.want_keyframe = self.want_keyframe
        self._picture = []
        self.last_frame_at = time.monotonic()
        self.want_keyframe()
        return old

    # fan-out

    def _on_frame(self, frame: MediaFrame) -> None:
        self.last_frame_at = frame.arrival
        if frame.kind != "video":
            # An Opus packet is one RTP packet per viewer: it goes at once, even while
            # a keyframe is still on its way to some of them (another RTP stream).
            for consumer in tuple(self._consumers[frame.kind]):
                consumer.push(frame)
            return
        self._keep_picture(frame)
        consumers = tuple(self._consumers["video"])
        if consumers:
            # Whoever is last waits longest: take turns.
            turn = self._turn % len(consumers)
            self._turn += 1
            consumers = consumers[turn:] + consumers[:turn]
        owed = {c for item in self._queued for c in item.consumers}
        if owed:
            # Consumers still owed earlier frames get this one after them, in order;
            # the others have had everything before it and get it straight away.
            now = [c for c in consumers if c not in owed]
            later = [c for c in consumers if c in owed]
            if later:
                self._queued.append(_FanOut(frame, later))
            if now:
                self._queued.appendleft(_FanOut(frame, now))
        else:
            self._queued.append(_FanOut(frame, consumers))
        self._fan_out()

    def _fan_out(self) -> None:
        """Hand queued video frames on, about FAN_OUT_SLICE packets' worth at a time.

        What is left is picked up after the event loop has had a turn, so that audio,
        RTCP and the next frame's packets are read in between.
        """
        budget = FAN_OUT_SLICE
        queued = self._queued
        while queued and budget > 0:
            item = queued[0]
            consumers = item.consumers
            while consumers and budget > 0:
                try:
                    consumers.popleft().push(item.frame)
                except Exception:
                    # One consumer's fault must not keep the frame from the others.
                    logger.exception("stage %s: a consumer failed", self.stage_id)
                budget -= item.packets
            if not consumers:
                queued.popleft()
        if queued and self._fan_out_handle is None and not self.ended:
            loop = asyncio.get_running_loop()
            self._fan_out_handle = loop.call_soon(self._fan_out_later)

    def _fan_out_later(self) -> None:
        self._fan_out_handle = None
        self._fan_out()

    def _keep_picture(self, frame: MediaFrame) -> None:
        if frame.keyframe:
            self._keyframe_wanted = False
            self._picture = [frame]
        elif self._picture:
            self._picture.append(frame)
            # Asked one frame past the refresh length, so that an encoder with a
            # keyframe every PICTURE_REFRESH frames (OBS at 1 s) is never asked, and
            # only while someone watches: a newcomer to an empty stage can wait.
            if len(self._picture) == PICTURE_REFRESH + 1 and self.viewers:
                self.want_keyframe()
            elif len(self._picture) > PICTURE_LIMIT:
                self._picture = []

    def current_picture(self) -> list[MediaFrame]:
        """The frames a newcomer needs to show the current picture (empty if none)."""
        return list(self._picture)

    def subscribe(self, kind: str, consumer: Consumer) -> None:
        self._consumers[kind].add(consumer)

    def unsubscribe(self, kind: str, consumer: Consumer) -> None:
        self._consumers[kind].discard(consumer)
        # Frames still queued for it are not its any more (it may be on another
        # stage by the time they would go out, or back on this one, replayed anew).
        for item in self._queued:
            if consumer in item.consumers:
                item.consumers.remove(consumer)

    # keyframes

    def want_keyframe(self) -> None:
        """Someone needs a keyframe: ask the publisher, at most once per interval."""
        if "video" not in self.publisher.tracks or self.ended:
            return
        self._keyframe_wanted = True
        elapsed = time.monotonic() - self._last_keyframe_request
        if elapsed >= KEYFRAME_INTERVAL:
            self._request_keyframe()
        elif self._retry is None:
            delay = KEYFRAME_INTERVAL - elapsed
            self._retry = asyncio.get_running_loop().call_later(
                delay, self._retry_keyframe
            )

    def _retry_keyframe(self) -> None:
        self._retry = None
        if self._keyframe_wanted and not self.ended:
            self._request_keyframe()

    def _request_keyframe(self) -> None:
        self._last_keyframe_request = time.monotonic()
        self.publisher.request_keyframe()
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(KEYFRAME_RETRY, self._retry_keyframe)

    def end(self) -> None:
        self.ended = True
        self.publisher.deliver = None
        self.publisher.want_keyframe = None
        self._queued.clear()
        if self._fan_out_handle is not None:
            self._fan_out_handle.cancel()
            self._fan_out_handle = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
