"""One performance's recording: a consumer of the stage's frames, like a viewer.

Audio and video reach us on unrelated RTP clocks. The publisher's RTCP sender reports
map each clock to its own wall clock, which puts both tracks on one timeline; until
both reports are in (they come within a second or two), frames wait in a short buffer.
A publisher that sends no reports, or reports that disagree with when its frames
arrive, is aligned by arrival time instead. From there each track's timeline
(timeline.py) follows its RTP clock as far as that clock can be trusted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ..relay.frames import MediaFrame
from .files import Finished, container_for, finish, recording_paths
from .timeline import TrackTimeline
from .writer import Writer

logger = logging.getLogger(__name__)

# How long frames may wait for sender reports before the timeline is fixed anyway.
ALIGN_WAIT = 3.0
# A writer this far behind is on a disk that cannot keep up: stop rather than hoard.
MAX_BACKLOG = 3000
# Sender reports put both tracks on the publisher's clock. If that clock and our own
# disagree about the tracks' offset by more than this, a report is wrong (a sender
# whose tracks run on unrelated clocks, or reporting before it sent anything).
REPORTS_DISAGREE = 1.0


class Recording:
    def __init__(
        self,
        folder: Path,
        started_at: datetime,
        kinds: dict[str, object],
        video_codec: str | None,
        on_failure: Callable[[str], None],
        want_keyframe: Callable[[], None] = lambda: None,
    ) -> None:
        """`kinds` maps "audio"/"video" to the publisher tracks that will feed us;
        `want_keyframe` asks the publisher for one."""
        self.state = "recording"
        self.error: str | None = None
        self._tracks = kinds
        self._video_codec = video_codec
        self._format, extension = container_for(video_codec)
        self.live_path, self.path = recording_paths(folder, started_at, extension)
        self._on_failure = on_failure
        self._want_keyframe = want_keyframe
        self._loop = asyncio.get_running_loop()
        self._pending: list[MediaFrame] = []
        self._first_arrival: float | None = None
        self._timelines: dict[object, TrackTimeline] = {}  # by source
        self._origin: float | None = None
        self._last_pts: dict[str, int] = {}
        self._writer: Writer | None = None
        self._kinds_written: set[str] = set()
        self._video_waits_for_keyframe = True

    # frames in (on the event loop, from the stage hub)

    def push(self, frame: MediaFrame) -> None:
        if self.state != "recording":
            return
        if self._writer is None:
            self._buffer(frame)
            return
        self._write(frame)

    def _buffer(self, frame: MediaFrame) -> None:
        if self._first_arrival is None:
            self._first_arrival = time.monotonic()
        self._pending.append(frame)
        waited = time.monotonic() - self._first_arrival
        if self._ready() or waited >= ALIGN_WAIT:
            self._start()

    def _ready(self) -> bool:
        seen = {f.kind for f in self._pending}
        if seen != set(self._tracks):
            return False
        if "video" in self._tracks and not any(
            f.keyframe for f in self._pending if f.kind == "video"
        ):
            return False
        return all(t.sender_report is not None for t in self._tracks.values())

    def _start(self) -> None:
        frames, self._pending = self._pending, []
        by_reports = self._anchor(frames)
        placed = [
            (f, self._timelines[f.source].place(f.timestamp, f.arrival)) for f in frames
        ]
        placed = [(f, seconds) for f, seconds in placed if seconds is not None]
        frames = [f for f, _ in placed]
        self._origin = min(seconds for _, seconds in placed)

        # Every track the publisher offered gets a stream, whether or not it has sent
        # anything yet: a microphone allowed late, a camera switched on later or a
        # first keyframe lost from an encoder that ignores PLIs starts its track
        # seconds after the other, and a file opened without it could never take it.
        # A stream that stays empty is left out when the file is finished (files.py).
        keyframes = [f for f in frames if f.kind == "video" and f.keyframe]
        video = None
        if "video" in self._tracks:
            width, height = (keyframes[0].size if keyframes else None) or (640, 480)
            video = (self._video_codec or "VP8", width, height)
        audio = "audio" in self._tracks
        self._writer = Writer(
            self.live_path, self._format, video, audio, self._fail_soon
        )
        self._kinds_written = set(self._tracks)
        waiting = sorted(set(self._tracks) - {f.kind for f in frames})
        logger.info(
            "recording %s started: %s, aligned by %s%s",
            self.live_path.name,
            "+".join(sorted(self._kinds_written)),
            "sender reports" if by_reports else "arrival time",
            f"; no {' or '.join(waiting)} yet" if waiting else "",
        )
        for frame, seconds in placed:
            self._write(frame, seconds)

    def _anchor(self, frames: list[MediaFrame]) -> bool:
        """Start each source's timeline at its first frame; True if by sender reports."""
        first: dict[object, MediaFrame] = {}
        for frame in frames:
            first.setdefault(frame.source, frame)
        now_wall, now = time.time(), time.monotonic()
        arrived = {s: now_wall - (now - f.arrival) for s, f in first.items()}
        reported = {}
        if all(t.sender_report is not None for t in self._tracks.values()):
            reported = {s: s.sender_time(f.timestamp) for s, f in first.items()}
            # Each track's reported capture time, less its arrival: about the same
            # network and encoder delay for both, or a report is wrong.
            offsets = [reported[s] - arrived[s] for s in first]
            if max(offsets) - min(offsets) > REPORTS_DISAGREE:
                logger.warning(
                    "recording %s: sender reports disagree by %.1f s with arrival",
                    self.live_path.name,
                    max(offsets) - min(offsets),
                )
                reported = {}
        for source, frame in first.items():
            seconds = reported.get(source, arrived[source])
            self._timelines[source] = self._timeline(frame, seconds)
        return bool(reported)

    def _timeline(self, frame: MediaFrame, seconds: float) -> TrackTimeline:
        name = f"{self.live_path.name} {frame.kind}"
        rate = frame.source.clock_rate
        return TrackTimeline(name, rate, seconds, frame.timestamp, frame.arrival)

    def _place(self, frame: MediaFrame) -> float | None:
        timeline = self._timelines.get(frame.source)
        if timeline is None:
            # A track whose first frame came after the file was opened: it begins
            # where its arrival falls on the timeline of the tracks already placed
            # (their sender reports, if any, came with frames this one did not have).
            seconds = self._arrival_seconds(frame)
            timeline = self._timelines[frame.source] = self._timeline(frame, seconds)
        return timeline.place(frame.timestamp, frame.arrival)

    def _arrival_seconds(self, frame: MediaFrame) -> float:
        """Where a frame's arrival falls on the timeline the other tracks follow."""
        if not self._timelines:
            return self._origin
        latest = max(self._timelines.values(), key=lambda t: t.last_arrival)
        return latest.newest_seconds + (frame.arrival - latest.last_arrival)

    def _write(self, frame: MediaFrame, seconds: float | None = None) -> None:
        if frame.kind not in self._kinds_written:
            return
        if seconds is None:
            seconds = self._place(frame)
            if seconds is None:
                # Stale, and dropped. The frames after a dropped keyframe cannot be
                # decoded without it (a camera switched with replaceTrack restarts
                # the clock on one): wait for the next. An old delta frame handed
                # over again is no loss: the newer frames never referred to it.
                if frame.kind == "video" and frame.keyframe:
                    self._video_waits_for_keyframe = True
                return
        if frame.kind == "video" and self._video_waits_for_keyframe:
            if not frame.keyframe:
                # Asked again while it waits: the hub asks at most every 0.3 s, and
                # a keyframe that came while frames were stale was dropped too.
                self._want_keyframe()
                return
            self._video_waits_for_keyframe = False
        pts = round((seconds - self._origin) * 1000)
        # Muxers need increasing timestamps; jittered or repeated ones are nudged
        # forward a millisecond at a time instead of stopping the recording.
        last = self._last_pts.get(frame.kind)
        if last is not None and pts <= last:
            pts = last + 1
        self._last_pts[frame.kind] = max(pts, 0)
        self._writer.write(frame.kind, frame.data, max(pts, 0), frame.keyframe)
        if self._writer.backlog > MAX_BACKLOG:
            self._fail("the recording disk cannot keep up")

    # failure and the end

    def _fail_soon(self, reason: str) -> None:
        # Called from the writer thread.
        self._loop.call_soon_threadsafe(self._fail, reason)

    def _fail(self, reason: str) -> None:
        if self.state != "recording":
            return
        self.state = "failed"
        self.error = reason
        logger.warning("recording %s stopped: %s", self.live_path.name, reason)
        self._on_failure(reason)

    def _has_media(self) -> bool:
        return any(f.kind == "audio" or f.keyframe for f in self._pending)

    def _clock_trouble(self) -> str:
        said = [
            f"; {t.name.rsplit(' ', 1)[-1]} clock followed arrival {t.rebased} times,"
            f" {t.dropped} stale frames dropped"
            for t in self._timelines.values()
            if t.rebased or t.dropped
        ]
        return "".join(said)

    async def close(self) -> Finished:
        """Stop taking frames, finish the file off the event loop, say what is left."""
        if self._writer is None and self.state == "recording" and self._has_media():
            # A short show ended while its frames still waited for sender reports:
            # write them on the clock we have rather than lose them.
            self._start()
        if self.state == "recording":
            self.state = "finishing"
        writer, self._writer = self._writer, None
        self._pending = []
        if writer is None:
            return Finished(None, 0.0, 0, {"audio": 0, "video": 0})
        await self._loop.run_in_executor(None, writer.finish)
        if writer.failure and self.error is None:
            # The writer failed on its last packets or on closing: say so, so that
            # the performance is not listed as one that got no media.
            self.state, self.error = "failed", writer.failure
        finished = await self._loop.run_in_executor(None, finish, self.live_path)
        logger.info(
            "recording %s closed: %.1f s, %s bytes, frames %s%s",
            self.path.name,
            finished.duration,
            finished.size,
            finished.frames,
            self._clock_trouble(),
        )
        return finished
