"""Where each frame of one publisher track falls on a recording's timeline.

A frame's RTP timestamp says when it was captured, to the tick, and keeps lip sync;
its arrival says when it reached us, give or take the network and our own event
loop. The timeline follows the timestamps for as long as they agree with arrival
within reason, and falls back on arrival where they do not: a clock that leaps ahead
(a buggy or restarted encoder), one that stood still while the publisher paused or
stays behind real time, one that steps back for good. A few frames stamped earlier than the newest one are stale (an old
frame handed over again) and are dropped: they would only smear the picture. So
whatever a publisher's clock does, a recording lasts about as long as the show.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Timestamps that run this far ahead of arrival have leapt: a frame is never early.
AHEAD_LIMIT = 2.0
# Frames arrive late behind a stalled event loop or a jitter buffer waiting for a
# retransmission, and then catch up in a burst. Frames that stay this late for this
# long (seconds of arrival) are on a clock that stood still or runs slow.
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
        self._late_since: float | None = None
        self.rebased = 0
        self.dropped = 0
        self._rebase(seconds, timestamp, arrival)

    def place(self, timestamp: int, arrival: float) -> float | None:
        """Seconds for a frame, or None for a stale frame that is best dropped."""
        if timestamp < self._newest:
            return self._behind(timestamp, arrival)
        self._stale_since = None

        seconds = self._base_seconds + (timestamp - self._base_timestamp) / self.rate
        on_arrival = self._base_seconds + (arrival - self._base_arrival)
        ahead = seconds - on_arrival
        if ahead < -LATE_LIMIT:
            if self._late_since is None:
                self._late_since = arrival
        else:
            self._late_since = None
        if ahead > AHEAD_LIMIT:
            self._warn(f"leapt {ahead:.1f} s ahead of arrival time")
            seconds = self._follow_arrival(on_arrival, timestamp, arrival)
        elif self._late_since is not None and arrival - self._late_since > LATE_FOR:
            self._warn(f"stays {-ahead:.1f} s behind arrival time")
            seconds = self._follow_arrival(on_arrival, timestamp, arrival)
        elif ahead > 0 and arrival - self._based_at < SETTLE:
            # This frame came sooner after the first than their timestamps say:
            # the first was the late one.
            self._base_arrival -= ahead

        self._newest, self._newest_seconds = timestamp, seconds
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
        self._stale_since = self._late_since = None

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
