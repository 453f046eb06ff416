"""A retransmission that comes long after its frame left changes nothing for viewers.

Under a stalled event loop, answers to NACKs can reach the server after a hundred
later packets. aiortc's buffer would take such a packet for a sender counting afresh:
start over from it, hand an old picture on, and wait behind the hole it made.
"""

import asyncio

from tests.clocks import replay_old_packets
from tests.peers import Publisher, Viewer, record_rtp
from tests.test_recorder_clocks import sender_of


def steps_back(packets: list) -> list:
    """Timestamps, in arrival order, that are earlier than one already received."""
    back, newest = [], None
    for _, _, timestamp in packets:
        if newest is not None and 0 < (newest - timestamp) % (1 << 32) < (1 << 31):
            back.append((newest, timestamp))
        else:
            newest = timestamp
    return back


async def test_late_retransmissions_neither_replay_nor_stall_the_picture(
    server, new_stage
):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start(stage["id"])
    await viewer.wait_video(count=10)
    seen = record_rtp(viewer)
    await asyncio.sleep(5)  # the sender's history fills: 128 packets

    sent = await replay_old_packets(sender_of(publisher, "video"))
    assert sent >= 4, sent
    replayed = len(seen["video"])
    await asyncio.sleep(2)

    assert steps_back(seen["video"]) == []
    after = {timestamp for _, _, timestamp in seen["video"][replayed:]}
    assert len(after) >= 10, f"{len(after)} video frames in the 2 s after the replay"
    await viewer.stop()
    await publisher.stop()
