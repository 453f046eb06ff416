"""A stage hub hands a big video frame on in slices, and nothing waits behind it needlessly.

The hub is the real one, fed through its publisher's `deliver` as the publisher's tap
feeds it; its consumers note what they were handed and when (before or after the
event loop had a turn), as a viewer track or the recording would receive it.
"""

import asyncio

import pytest
from aiortc import RTCPeerConnection

from stage.relay.frames import MediaFrame
from stage.relay.hub import StageHub
from stage.relay.packets import PAYLOAD_MAX
from stage.relay.publisher import Publisher

VIEWERS = 40
KEYFRAME_PACKETS = 25  # what the bench's 640x480 VP8 keyframes are cut into


class Noting:
    """A consumer that notes the timestamps of the frames it is handed, and its turn
    in `served` (shared by all)."""

    def __init__(self, served: list) -> None:
        self.got: list[int] = []
        self.served = served

    def push(self, frame: MediaFrame) -> None:
        self.got.append(frame.timestamp)
        self.served.append(self)


def video(timestamp: int, packets: int, keyframe: bool) -> MediaFrame:
    data = bytes(PAYLOAD_MAX * packets)
    return MediaFrame("video", "VP8", data, timestamp, "source", keyframe, None)


def audio(timestamp: int) -> MediaFrame:
    return MediaFrame("audio", "opus", b"\xfc" * 80, timestamp, "source")


@pytest.fixture
async def hub():
    pc = RTCPeerConnection()
    hub = StageHub("stage", "Stage", Publisher("stage", pc))
    yield hub
    hub.end()
    await pc.close()


def subscribed(hub, kind: str, served: list | None = None) -> list[Noting]:
    served = [] if served is None else served
    consumers = [Noting(served) for _ in range(VIEWERS)]
    for consumer in consumers:
        hub.subscribe(kind, consumer)
    return consumers


async def drained(consumers: list[Noting], count: int) -> None:
    for _ in range(100):
        if all(len(c.got) >= count for c in consumers):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not every consumer got {count} frames: {consumers}")


async def test_audio_goes_out_while_a_keyframe_is_still_being_handed_on(hub):
    viewers = subscribed(hub, "video")
    listeners = subscribed(hub, "audio")

    hub.publisher.deliver(video(0, KEYFRAME_PACKETS, keyframe=True))
    had_keyframe = sum(1 for v in viewers if v.got)
    hub.publisher.deliver(audio(0))

    assert 0 < had_keyframe < VIEWERS, (
        f"{had_keyframe} of {VIEWERS} viewers had the keyframe of {KEYFRAME_PACKETS} "
        "packets before the event loop had a turn: expected a slice of them"
    )
    assert all(listener.got == [0] for listener in listeners)
    await drained(viewers, 1)
    assert all(v.got == [0] for v in viewers)


async def test_viewers_who_had_the_keyframe_get_the_next_frame_at_once(hub):
    viewers = subscribed(hub, "video")

    hub.publisher.deliver(video(0, KEYFRAME_PACKETS, keyframe=True))
    served = [v for v in viewers if v.got]
    hub.publisher.deliver(video(3000, 2, keyframe=False))

    assert served and all(v.got == [0, 3000] for v in served)
    # The rest get it after the keyframe (some may have had the keyframe meanwhile).
    waiting = [v for v in viewers if v not in served]
    assert waiting and all(v.got in ([], [0]) for v in waiting)
    await drained(viewers, 2)
    assert all(v.got == [0, 3000] for v in viewers), [v.got for v in viewers]


async def test_a_viewer_that_leaves_mid_fan_out_is_handed_nothing_more(hub):
    viewers = subscribed(hub, "video")

    hub.publisher.deliver(video(0, KEYFRAME_PACKETS, keyframe=True))
    hub.publisher.deliver(video(3000, 2, keyframe=False))
    leaving = next(v for v in viewers if not v.got)
    hub.unsubscribe("video", leaving)
    staying = [v for v in viewers if v is not leaving]

    await drained(staying, 2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert leaving.got == []


async def test_who_is_served_last_takes_turns(hub):
    served: list[Noting] = []
    viewers = subscribed(hub, "video", served)
    last_served = []
    for k in range(3):
        hub.publisher.deliver(video(3000 * k, KEYFRAME_PACKETS, keyframe=True))
        await drained(viewers, k + 1)
        last_served.append(served[-1])

    assert len(set(map(id, last_served))) == 3
