"""Where each frame of one publisher track falls on a recording's timeline.

A frame's RTP timestamp says when it was captured, to the tick, and keeps lip sync;
its arrival says when it reached us, give or take the network and our own event
loop. The timeline follows the timestamps for as long as they agree with arrival
within reason, and falls back on arrival where they do not: a clock that leaps ahead
(a buggy or restarted encoder), one that stood still while the publisher paused, one
that steps back for good. A few frames stamped earlier than the newest one are stale
(an old frame handed over again) and are dropped: they would only smear the picture.

A clock that merely runs slow is followed: an encoder that cannot keep up (OBS on a
busy laptop) stamps its frames in media time, and the recording plays its media
without holes, shorter than the show by what the encoder fell behind. So is a burst
after a stall that catches up on time (the frames were late, not missing).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Timestamps that run this far ahead of arrival have leapt: a frame is never early.
AHEAD_LIMIT = 2.0
# A pause: this long without a frame of the track (seconds of arrival).
PAUSE = 1.0
# Frames fall behind their clock over a pause, and catch up in a burst if they were
# only delayed. Frames still this much later than before the pause, this long after
# it, come from a clock that stood still while the publisher paused.
LATE_LIMIT = 1.0
LATE_FOR = 3.0
# Frames stamped before the newest one are dropped for this long (seconds of
# arrival); if they keep coming, the clock went back for good and is followed.
STALE_FOR = 1.0
# After the timeline is (re)based, this long of arrival time settles where it stands:
# a first frame that came late must not make every later one look early.
SETTLE = 5.0


class TrackTimeline:
    """Seconds on the recording's timeline for one track's frames, in arrival order.

    `seconds` is where the first frame (RTP timestamp `timestamp`, arrived at
    monotonic `arrival`) falls; `rate` is the RTP clock rate.
    """

    def __init__(
        self, name: str, rate: int, seconds: float, timestamp: int, arrival: float
    ) -> None:
        self.name = name
        self.rate = rate
        self._newest = timestamp  # the newest timestamp placed
        self._newest_seconds = seconds
        self._stale_since: float | None = None
        # After a pause: (when it ended, how far ahead of arrival frames were before).
        self._pause: tuple[float, float] | None = None
        self._last_arrival = arrival
        self._last_ahead = 0.0
        self.rebased = 0
        self.dropped = 0
        self._rebase(seconds, timestamp, arrival)

    @property
    def last_arrival(self) -> float:
        """When the newest frame placed arrived (monotonic seconds)."""
        return self._last_arrival

    @property
    def newest_seconds(self) -> float:
        """Where the newest frame placed fell on the recording's timeline."""
        return self._newest_seconds

    def place(self, timestamp: int, arrival: float) -> float | None:
        """Seconds for a frame, or None for a stale frame that is best dropped."""
        if timestamp < self._newest:
            return self._behind(timestamp, arrival)
        self._stale_since = None

        seconds = self._base_seconds + (timestamp - self._base_timestamp) / self.rate
        on_arrival = self._base_seconds + (arrival - self._base_arrival)
        ahead = seconds - on_arrival
        if arrival - self._last_arrival > PAUSE and self._pause is None:
            self._pause = (arrival, self._last_ahead)
        self._last_arrival = arrival
        if self._pause is not None:
            ended, before = self._pause
            if ahead - before >= -LATE_LIMIT:
                self._pause = None  # caught up: the clock ran on over the pause
            elif arrival - ended > LATE_FOR:
                self._pause = None
                self._warn(f"stood still over a pause ({before - ahead:.1f} s)")
                seconds = self._follow_arrival(on_arrival + before, timestamp, arrival)
                ahead = before
        if ahead > AHEAD_LIMIT:
            self._warn(f"leapt {ahead:.1f} s ahead of arrival time")
            seconds = self._follow_arrival(on_arrival, timestamp, arrival)
            ahead = 0.0
        elif ahead > 0 and arrival - self._based_at < SETTLE:
            # This frame came sooner after the first than their timestamps say:
            # the first was the late one.
            self._base_arrival -= ahead
            ahead = 0.0

        self._newest, self._newest_seconds = timestamp, seconds
        self._last_ahead = ahead
        return seconds

    def _behind(self, timestamp: int, arrival: float) -> float | None:
        if self._stale_since is None:
            self._stale_since = arrival
        if arrival - self._stale_since < STALE_FOR:
            self.dropped += 1
            return None
        back = (self._newest - timestamp) / self.rate
        self._warn(f"went back {back:.1f} s for good")
        on_arrival = self._base_seconds + (arrival - self._base_arrival)
        seconds = self._follow_arrival(on_arrival, timestamp, arrival)
        self._newest, self._newest_seconds = timestamp, seconds
        return seconds

    def _follow_arrival(
        self, on_arrival: float, timestamp: int, arrival: float
    ) -> float:
        """Place this frame by its arrival and follow its clock again from there."""
        seconds = max(on_arrival, self._newest_seconds)
        self._rebase(seconds, timestamp, arrival)
        return seconds

    def _rebase(self, seconds: float, timestamp: int, arrival: float) -> None:
        self._base_seconds = seconds
        self._base_timestamp = timestamp
        self._base_arrival = arrival
        self._based_at = arrival
        self._stale_since = None

    def _warn(self, what: str) -> None:
        # The first time at WARNING; a clock that keeps doing it would flood the log
        # (the recording's closing line counts them all).
        self.rebased += 1
        logger.log(
            logging.WARNING if self.rebased == 1 else logging.DEBUG,
            "recording %s: the publisher's clock %s; following arrival time",
            self.name,
            what,
        )
