"""A performer lost and back: a reload, an encoder killed and restarted with the key.

A publisher that goes without a WHIP DELETE (its connection closed, or its media went
quiet) leaves its stage held for the same key: its viewers stay on the frozen picture
and are told, newcomers and Next go elsewhere, and when the key publishes again the
viewers get the new picture on the same outgoing RTP stream. When nobody comes back
within the window, the viewers are moved on.
"""

from __future__ import annotations

import asyncio
import time

from stage.appkeys import VENUE
from stage.venue import QUIET_AFTER, RECONNECT_WINDOW
from tests.peers import CountingViewer, Publisher, Viewer, record_rtp
from tests.test_ffmpeg_whip import ffmpeg_publishing, wait_for
from tests.test_server_contract import live_ids, stage_info

# ffmpeg's camera footage is 640x480; the aiortc stages send a 320x240 pattern.
FOOTAGE = (640, 480)


def dark(summary) -> bool:
    return summary[2] < 100


def bright(summary) -> bool:
    return summary[2] >= 180


def middling(summary) -> bool:
    return 100 < summary[2] < 180


async def viewer_stage(viewer) -> dict | None:
    status, body = await viewer.request("GET")
    assert status == 200, (status, body)
    return body["stage"]


async def wait_reconnecting(viewer, stage_id: str, timeout: float) -> float:
    """Wait until the viewer's own events would say its stage is held; when that was."""

    async def held():
        stage = await viewer_stage(viewer)
        assert stage is not None and stage["id"] == stage_id, (
            f"the viewer left the held stage: {stage}"
        )
        return stage["reconnecting"]

    await wait_for(held, "the viewer's stage never said it was reconnecting", timeout)
    return time.monotonic()


def assert_continuous_in_time(packets: list, rate: int, what: str) -> float:
    """One stream: sequence numbers +1 each, timestamps keeping to the wall clock.

    A publisher that was away for seconds leaves a gap in time; the timestamps must
    cross it as far as the clock did, never jumping back and never running ahead or
    behind by a second (what a receiver's jitter buffer would swallow). Returns the
    longest gap crossed, in seconds.
    """
    assert len(packets) > 20, f"{what}: only {len(packets)} packets"
    longest = 0.0
    for (t_a, seq_a, ts_a), (t_b, seq_b, ts_b) in zip(
        packets, packets[1:], strict=False
    ):
        assert (seq_b - seq_a) % 65536 == 1, f"{what}: sequence {seq_a} -> {seq_b}"
        step = (ts_b - ts_a) % (1 << 32)
        assert step < 1 << 31, f"{what}: timestamp goes back ({ts_a} -> {ts_b})"
        drift = step / rate - (t_b - t_a)
        assert abs(drift) < 1.0, (
            f"{what}: timestamps moved {step / rate:.2f} s over {t_b - t_a:.2f} s "
            f"({ts_a} -> {ts_b})"
        )
        longest = max(longest, t_b - t_a)
    return longest


async def test_an_encoder_killed_and_restarted_keeps_its_viewers(
    server, http, new_stage, media, ffmpeg, tmp_path
):
    """SIGKILL (no DELETE, no DTLS close: silence) and the same key ~7 s later."""
    stage = await new_stage("Encoder")
    other = await new_stage("Elsewhere")
    elsewhere = await Publisher(server.base, other["id"], other["key"]).start(shade=200)
    url = f"{server.base}/whip/{stage['id']}"
    venue = server.app[VENUE]

    async with ffmpeg_publishing(
        ffmpeg, media, url, stage["key"], tmp_path / "first.log", seconds=60
    ) as first:

        async def is_live():
            return stage["id"] in await live_ids(server, http)

        await wait_for(
            is_live, "ffmpeg's stage is not live", 20, tmp_path / "first.log"
        )
        old_publisher = venue.hubs[stage["id"]].publisher
        viewer = await Viewer(server.base).start(stage_id=stage["id"])
        seen = record_rtp(viewer)
        await viewer.wait_video(count=30, timeout=10)

        first.kill()
        killed = time.monotonic()
        await first.wait()

    try:
        # The stage is held: its viewer is told, and it is not offered as live.
        held = await wait_reconnecting(viewer, stage["id"], timeout=QUIET_AFTER + 3)
        info = await stage_info(server, http, stage["id"])
        assert info["reconnecting"] is True and info["live"] is False, info
        assert info["viewers"] == 1, info
        assert stage["id"] not in await live_ids(server, http)

        await asyncio.sleep(max(0.0, killed + 7 - time.monotonic()))
        log = tmp_path / "second.log"
        async with ffmpeg_publishing(ffmpeg, media, url, stage["key"], log, 8):
            restarted = time.monotonic()

            async def first_new_frame() -> float | None:
                # ffmpeg starts on a keyframe, which the hub keeps with its arrival.
                hub = venue.hubs.get(stage["id"])
                assert hub is not None, "the held stage ended before the restart"
                picture = hub.current_picture()
                if hub.publisher is old_publisher or not picture:
                    return None
                return picture[0].arrival

            arrived = await wait_for(
                first_new_frame, "no frame from the restart", 10, log
            )

            # The new picture reaches the viewer within 3 s of the server's first
            # frame of it, and nothing but ffmpeg's footage is shown.
            shown = await viewer.wait_video(
                count=1, since=restarted, timeout=arrived + 3 - time.monotonic()
            )
            await viewer.wait_video(count=30, since=restarted, timeout=5)
            sizes = {s[:2] for s in viewer.video_since(restarted)}
            assert sizes == {FOOTAGE}, f"frames after the restart: {sizes}"
            stage_now = await viewer_stage(viewer)
            assert stage_now["id"] == stage["id"], stage_now
            assert stage_now["reconnecting"] is False, stage_now
            assert stage["id"] in await live_ids(server, http)
            assert viewer.pc.connectionState == "connected"
            # Audio too, then the stream as the viewer received it.
            await asyncio.sleep(0.5)
            video_gap = assert_continuous_in_time(seen["video"], 90000, "video")
            audio_gap = assert_continuous_in_time(seen["audio"], 48000, "audio")
            assert video_gap > 6 and audio_gap > 6, (video_gap, audio_gap)

        print(
            f"\nkill -> held {held - killed:.2f} s; kill -> restart "
            f"{restarted - killed:.2f} s; restart -> first frame at the server "
            f"{arrived - restarted:.2f} s; that frame -> viewer's first new picture "
            f"{shown - arrived:.2f} s (restart -> picture {shown - restarted:.2f} s); "
            f"gaps crossed: video {video_gap:.2f} s, audio {audio_gap:.2f} s"
        )
    finally:
        await viewer.stop()
        await elsewhere.stop()


async def test_a_held_stage_is_offered_to_no_newcomer_and_to_no_next(
    server, http, new_stage
):
    a, b = await new_stage("Held"), await new_stage("Open")
    pa = await Publisher(server.base, a["id"], a["key"]).start(shade=0)
    pb = await Publisher(server.base, b["id"], b["key"]).start(shade=200)
    on_a = await Viewer(server.base).start(stage_id=a["id"])
    on_b = await Viewer(server.base).start(stage_id=b["id"])
    await on_a.wait_video(count=5, where=dark)
    newcomers = []
    try:
        # A page reload: A's connection closes without a DELETE.
        await pa.pc.close()
        await wait_reconnecting(on_a, a["id"], timeout=3)
        assert await live_ids(server, http) == [b["id"]]

        # A newcomer asking for A is refused for now; the roulette and Next never
        # give A, though it is the emptier stage and the only other one.
        async with http.post(
            f"{server.base}/whep/{a['id']}",
            data=await offer(),
            headers={"Content-Type": "application/sdp"},
        ) as response:
            assert response.status == 409, await response.text()
            assert int(response.headers["Retry-After"]) > 0
            assert "reconnecting" in (await response.json())["error"]
        for _ in range(3):
            newcomer = CountingViewer(server.base)
            newcomers.append(newcomer)
            await newcomer.start()
        for newcomer in newcomers:
            async with http.get(server.base + newcomer.location) as response:
                landed = (await response.json())["stage"]
            assert landed["id"] == b["id"], f"a newcomer landed on {landed}"
        status, body = await on_b.request("POST", "/next")
        assert status == 409, (status, body)
        held = await stage_info(server, http, a["id"])
        assert held["reconnecting"] is True and held["viewers"] == 1, held

        # The performer is back: A is offered again, its viewer never left.
        back = time.monotonic()
        pa2 = await Publisher(server.base, a["id"], a["key"]).start(shade=120)
        await on_a.wait_video(count=5, since=back, where=middling, timeout=3)
        assert not [s for s in on_a.video_since(back) if bright(s)], "it moved away"
        status, body = await on_b.request("POST", "/next")
        assert status == 200 and body["stage"]["id"] == a["id"], (status, body)
        assert body["stage"]["reconnecting"] is False, body
        assert sorted(await live_ids(server, http)) == sorted([a["id"], b["id"]])
        await pa2.stop()
    finally:
        for peer in (on_a, on_b, *newcomers):
            await peer.stop()
        await pb.stop()


async def offer() -> str:
    from tests.test_relay import offer_sdp

    return await offer_sdp()


async def test_a_performer_who_reconnects_keeps_the_viewers(server, new_stage, http):
    stage = await new_stage("Reloading")
    other = await new_stage("Elsewhere")
    first = await Publisher(server.base, stage["id"], stage["key"]).start(shade=0)
    elsewhere = await Publisher(server.base, other["id"], other["key"]).start(shade=200)
    viewer = await Viewer(server.base).start(stage_id=stage["id"])
    await viewer.wait_video(count=5, where=dark)

    # A page reload: the old connection goes without a WHIP DELETE, and the same key
    # publishes again a moment later.
    await first.pc.close()
    await asyncio.sleep(1.0)
    back = time.monotonic()
    second = await Publisher(server.base, stage["id"], stage["key"]).start(shade=120)
    await viewer.wait_video(count=5, since=back, where=middling, timeout=3)
    body = await viewer_stage(viewer)
    assert body["id"] == stage["id"], "the viewer stayed on the stage"
    assert not [s for s in viewer.video_since(back) if bright(s)], "never moved away"

    # Without a comeback the stage ends after the window and the viewer moves on.
    await second.pc.close()
    gone = time.monotonic()
    await wait_reconnecting(viewer, stage["id"], timeout=3)
    moved = await viewer.wait_video(
        count=5, since=gone, where=bright, timeout=RECONNECT_WINDOW + 5
    )
    info = await stage_info(server, http, stage["id"])
    assert info["live"] is False and info["reconnecting"] is False, info
    print(f"\nclosed without a DELETE -> viewer on another stage {moved - gone:.1f} s")
    await viewer.stop()
    await elsewhere.stop()


async def test_a_publisher_that_goes_silent_is_held_then_viewers_move_on(
    server, new_stage, http
):
    a, b = await new_stage("Frozen"), await new_stage("Alive")
    pa = await Publisher(server.base, a["id"], a["key"]).start(shade=0)
    pb = await Publisher(server.base, b["id"], b["key"]).start(shade=200)
    viewer = await Viewer(server.base).start(stage_id=a["id"])
    await viewer.wait_video(count=5, where=dark)

    # The performer's machine stops sending media (a hung encoder, a cut uplink) while
    # its ICE agent still answers: no goodbye, and nothing for ICE consent to notice.
    async def swallow(data):
        pass

    for sender in pa.pc.getSenders():
        sender.transport._send_rtp = swallow
    cut = time.monotonic()

    # Held: the viewer stays, told so; then, nobody having come back, it is moved on.
    held = await wait_reconnecting(viewer, a["id"], timeout=QUIET_AFTER + 3)
    summary = await stage_info(server, http, a["id"])
    assert summary["live"] is False and summary["reconnecting"] is True, summary
    assert summary["viewers"] == 1, summary
    moved = await viewer.wait_video(
        count=5, since=cut, where=bright, timeout=RECONNECT_WINDOW + 5
    )
    summary = await stage_info(server, http, a["id"])
    assert summary["live"] is False and summary["viewers"] == 0, summary
    assert summary["reconnecting"] is False, summary
    assert (await viewer_stage(viewer))["id"] == b["id"]
    print(
        f"\nsilent -> held {held - cut:.1f} s, -> viewer on another stage "
        f"{moved - cut:.1f} s"
    )
    await viewer.stop()
    await pa.pc.close()
    await pb.stop()
