"""A frame leaves the relay as soon as it is whole, not when the next one arrives.

The publisher sends slowly (video at 2 frames a second, audio at 4 packets a second),
so "before the next frame was made" leaves half a second of room: the assertions are
about order, which a relay that waits for the following frame can never satisfy.
Each frame's timestamp gap to the one before names it: frame k is stamped at
step * k * (k + 1) / 2, so it follows its predecessor by step * k.
"""

import asyncio
import time

import pytest
from aiortc import MediaStreamTrack

from tests.peers import PatternTrack, Publisher, ToneTrack, Viewer, record_rtp

# Real-time gaps are measured here: `make test` runs these by themselves, after the
# parallel run, so that no other test competes for the two cores meanwhile.
pytestmark = pytest.mark.alone


class NumberedTrack(MediaStreamTrack):
    """Passes another track's frames on, stamped so each is known by its gap."""

    def __init__(self, track: MediaStreamTrack, step: int) -> None:
        super().__init__()
        self.kind = track.kind
        self._track, self._step = track, step
        self.made: list[float] = []  # when frame k was handed to the encoder

    async def recv(self):
        frame = await self._track.recv()
        k = len(self.made)
        frame.pts = self._step * k * (k + 1) // 2
        self.made.append(time.monotonic())
        return frame


class SlowTone(ToneTrack):
    """The tone, one 20 ms frame every quarter second."""

    async def recv(self):
        await asyncio.sleep(0.25)
        return await super().recv()


def frame_arrivals(packets: list, step: int) -> dict[int, float]:
    """{k: when the last packet of the frame named k reached the viewer}."""
    last: dict[int, float] = {}  # in order of first arrival (timestamps may wrap)
    for arrival, _, timestamp in packets:
        last[timestamp] = max(arrival, last.get(timestamp, 0.0))
    stamps = list(last)
    named = {}
    for before, stamp in zip(stamps, stamps[1:]):
        gap = (stamp - before) & 0xFFFFFFFF
        if gap % step == 0:
            named[gap // step] = last[stamp]
    return named


async def test_each_frame_reaches_a_viewer_before_the_next_is_made(server, new_stage):
    stage = await new_stage()
    video = NumberedTrack(PatternTrack(fps=2), step=900)
    audio = NumberedTrack(SlowTone(), step=960)
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start(
        tracks=(audio, video)
    )
    viewer = await Viewer(server.base).start(stage["id"])
    seen = record_rtp(viewer, retransmissions=True)
    joined = time.monotonic()
    await asyncio.sleep(4.5)

    # Frames made before the viewer joined come in a burst when it connects; the
    # frames made after that must each arrive before their successor is made.
    live = [k for k, made in enumerate(video.made) if made > joined + 1][:-1]
    arrived = frame_arrivals(seen["video"], step=900)
    assert len(live) >= 3, video.made
    for k in live:
        assert k in arrived, (k, sorted(arrived))
        assert arrived[k] < video.made[k + 1], ("video", k, arrived[k] - video.made[k + 1], [round(m - joined, 3) for m in video.made], {n: round(a - joined, 3) for n, a in arrived.items()})

    # Opus has a frame of look-ahead: the packet sent when frame k is encoded carries
    # the gap of the frame before (it is named k - 1); it is due before k + 1 is made.
    live = [k for k, made in enumerate(audio.made) if made > joined + 1][:-2]
    arrived = frame_arrivals(seen["audio"], step=960)
    assert len(live) >= 5, audio.made
    for k in live:
        assert k - 1 in arrived, (k, sorted(arrived))
        assert arrived[k - 1] < audio.made[k + 1], ("audio", k, arrived[k - 1] - audio.made[k + 1], [round(m - joined, 3) for m in audio.made], {n: round(a - joined, 3) for n, a in arrived.items()})

    await viewer.stop()
    await publisher.stop()
