"""A performance whose performer was lost ends with the last media received.

The stage is held for the same key for RECONNECT_WINDOW after that (README, "When a
performer drops"), but the hold is not part of the show: the length the dashboard
shows must match the recording, decoded back, whether nobody came back or the
performer did.
"""

from __future__ import annotations

import asyncio
import time

from stage.venue import RECONNECT_WINDOW
from tests.peers import Publisher, Viewer
from tests.test_audience import watches_csv
from tests.test_recorder import decode, performances
from tests.test_relay_reconnect import wait_reconnecting
from tests.test_server_contract import cut_network

# How far a performance's length may be from its recording's: the first frame is
# recorded a moment after the show starts (a keyframe is asked for).
SLACK = 1.0


async def recorded_seconds(http, server, stage, performance) -> float:
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(
        server.base + performance["recording"]["url"], headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        decoded = decode(await response.read())
    return max(end for _, end in decoded["spans"].values())


async def wait_ended(http, server, stage, count: int, timeout: float) -> list[dict]:
    """The stage's performances once `count` of them are over and recorded."""
    for _ in range(int(timeout * 10)):
        listed = await performances(http, server, stage)
        if len(listed) >= count and all(
            p["ended_at"] and p["recording"]["state"] == "ready" for p in listed
        ):
            return listed
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} performances not over and recorded: {listed}")


async def test_a_lost_performer_s_show_ends_at_the_last_media_not_after_the_hold(
    server, http, new_stage
):
    stage = await new_stage("Tab closed")
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start(stage_id=stage["id"])
    await viewer.wait_video(count=60)

    # A killed tab: no DELETE, no DTLS close; the stage is held, then given up on.
    cut_network(publisher.pc)
    await wait_reconnecting(viewer, stage["id"], timeout=10)
    [performance] = await wait_ended(
        http, server, stage, 1, timeout=RECONNECT_WINDOW + 20
    )
    recorded = await recorded_seconds(http, server, stage, performance)
    print(
        f"\nperformance {performance['duration']:.1f} s,"
        f" recording {recorded:.1f} s, hold {RECONNECT_WINDOW:.0f} s"
    )
    assert abs(performance["duration"] - recorded) < SLACK, (performance, recorded)

    # The viewer who stayed on the frozen picture watched the show, not the hold.
    [row] = await watches_csv(server, http, stage, performance)
    print(
        f"the viewer's visit: {float(row['seconds']):.1f} s, ended by {row['ended_by']}"
    )
    assert float(row["seconds"]) <= performance["duration"], (row, performance)
    await viewer.stop()
    await publisher.pc.close()


async def test_a_performer_back_within_the_hold_ends_the_first_show_at_its_last_media(
    server, http, new_stage
):
    stage = await new_stage("Encoder restarted")
    first = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start(stage_id=stage["id"])
    await viewer.wait_video(count=60)

    cut_network(first.pc)
    await wait_reconnecting(viewer, stage["id"], timeout=10)
    # Back a few seconds into the hold, with the same key.
    await asyncio.sleep(3)
    back = time.monotonic()
    second = await Publisher(server.base, stage["id"], stage["key"]).start()
    # Frames of the second show: the 60 of the first must not count.
    await viewer.wait_video(count=30, since=back)
    await second.stop()

    newer, older = await wait_ended(http, server, stage, 2, timeout=20)
    recorded = await recorded_seconds(http, server, stage, older)
    print(f"\nfirst show {older['duration']:.1f} s, its recording {recorded:.1f} s")
    assert abs(older["duration"] - recorded) < SLACK, (older, recorded)
    assert older["ended_at"] < newer["started_at"], (older, newer)
    [row] = await watches_csv(server, http, stage, older)
    assert float(row["seconds"]) <= older["duration"], (row, older)
    await viewer.stop()
    await first.pc.close()
