"""A link between workers (stage/relay/link.py) over a real Unix socket: frames arrive
whole and in order, and a link that falls behind drops to the next keyframe instead of
queueing without end."""

from __future__ import annotations

import asyncio

from stage.relay.frames import MediaFrame
from stage.relay.link import SEND_LIMIT, LinkedPublisher, LinkSender

KEYFRAME_EVERY = 30
FRAME_BYTES = 50_000


def frame(n: int, source) -> MediaFrame:
    keyframe = n % KEYFRAME_EVERY == 0
    return MediaFrame(
        "video",
        "VP8",
        n.to_bytes(4, "big") * (FRAME_BYTES // 4),
        n * 3000,
        source,
        keyframe,
        (640, 480) if keyframe else None,
    )


async def test_a_link_that_falls_behind_drops_to_the_next_keyframe(tmp_path):
    path = str(tmp_path / "link.sock")
    accepted = asyncio.Queue()
    server = await asyncio.start_unix_server(
        lambda r, w: accepted.put_nowait(w), path=path
    )
    reader, writer = await asyncio.open_unix_connection(path)
    sending = await accepted.get()
    asked = []
    sender = LinkSender(sending, lambda: asked.append(True))
    source = object()

    # Nobody reads yet: once SEND_LIMIT bytes wait, frames are dropped, and a
    # keyframe is asked for.
    for n in range(200):
        sender.push(frame(n, source))
    queued = sending.transport.get_write_buffer_size()
    assert queued < SEND_LIMIT + 2 * FRAME_BYTES, queued
    assert sender.dropped > 100 and asked, (sender.dropped, asked)

    description = {"stage": "s", "name": "S", "tracks": {"video": "VP8"}}
    mirrored = LinkedPublisher(description, writer)
    received: list[MediaFrame] = []
    mirrored.deliver = received.append
    reading = asyncio.ensure_future(mirrored.read(reader, lambda: None))
    while sending.transport.get_write_buffer_size():
        await asyncio.sleep(0.01)

    # Caught up: frames before the next keyframe are still dropped, then all pass
    # (sent paced, as a publisher sends them).
    for n in range(200, 240):
        sender.push(frame(n, source))
        await asyncio.sleep(0.005)
    await sending.drain()
    sending.close()
    await asyncio.wait_for(reading, 5)
    server.close()

    numbers = [int.from_bytes(f.data[:4], "big") for f in received]
    first_run = numbers[: numbers.index(210)]
    assert first_run == list(range(len(first_run))), numbers
    assert numbers[len(first_run) :] == list(range(210, 240)), numbers
    resumed = received[len(first_run)]
    assert resumed.keyframe and resumed.size == (640, 480), resumed
    assert all(len(f.data) == FRAME_BYTES for f in received)
    assert [f.timestamp for f in received] == [n * 3000 for n in numbers]
    assert len({id(f.source) for f in received}) == 1
