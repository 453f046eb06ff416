"""A stage hub: one live stage, its current publisher, and everyone it feeds.

Frames arrive on the event loop from the publisher's tap and are handed, still encoded,
to every consumer of their kind: viewer tracks and the recording. Consumers only
queue; nothing here waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from .frames import MediaFrame
from .publisher import Publisher

logger = logging.getLogger(__name__)

# PLIs upstream are coalesced: at most one per interval, however many viewers ask.
KEYFRAME_INTERVAL = 0.3
# While a keyframe is still wanted, ask again this often (a lost keyframe, B15).
KEYFRAME_RETRY = 1.0


class Consumer(Protocol):
    def push(self, frame: MediaFrame) -> None: ...


class StageHub:
    def __init__(self, stage_id: str, name: str, publisher: Publisher) -> None:
        self.stage_id = stage_id
        self.name = name
        self.publisher = publisher
        self.viewers: set = set()
        self.peak = 0
        self._consumers: dict[str, set[Consumer]] = {"audio": set(), "video": set()}
        self._keyframe_wanted = False
        self._last_keyframe_request = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self.ended = False
        self.last_frame_at = time.monotonic()
        publisher.deliver = self._on_frame

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
        publisher.deliver = self._on_frame
        self.last_frame_at = time.monotonic()
        self.want_keyframe()
        return old

    # fan-out

    def _on_frame(self, frame: MediaFrame) -> None:
        self.last_frame_at = frame.arrival
        if frame.keyframe and frame.kind == "video":
            self._keyframe_wanted = False
        for consumer in tuple(self._consumers[frame.kind]):
            consumer.push(frame)

    def subscribe(self, kind: str, consumer: Consumer) -> None:
        self._consumers[kind].add(consumer)

    def unsubscribe(self, kind: str, consumer: Consumer) -> None:
        self._consumers[kind].discard(consumer)

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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
