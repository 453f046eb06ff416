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
# The recording is sought and cut at keyframes (a player's seek, a clip's start), and
# a browser with nobody watching may send none for minutes: a 120 s show had them at
# 0, 3 and 103 s, so seeking to 60 s meant decoding from 3 s. With or without
# viewers, a keyframe is asked for once this long went by without one: 2 s, what
# streaming platforms ask of encoders, counted in time and not in frames (a webcam
# in low light sends 15 fps), with a little room so that an encoder sending one
# every 2 s (OBS, ffmpeg -g 60 at 30 fps) is never asked.
RECORDING_REFRESH = 2.1  # seconds


class Consumer(Protocol):
    def push(self, frame: MediaFrame) -> None: ...


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
        self._keyframe_at: float | None = None  # when the last one arrived
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
        self._keyframe_at = None
        self.last_frame_at = time.monotonic()
        self.want_keyframe()
        return old

    # fan-out

    def _on_frame(self, frame: MediaFrame) -> None:
        self.last_frame_at = frame.arrival
        if frame.kind == "video":
            self._keep_picture(frame)
        for consumer in tuple(self._consumers[frame.kind]):
            consumer.push(frame)

    def _keep_picture(self, frame: MediaFrame) -> None:
        if frame.keyframe:
            self._keyframe_wanted = False
            self._picture = [frame]
            self._keyframe_at = frame.arrival
            return
        if (
            self._keyframe_at is not None
            and frame.arrival - self._keyframe_at > RECORDING_REFRESH
            and not self._keyframe_wanted
        ):
            self.want_keyframe()
        if self._picture:
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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
