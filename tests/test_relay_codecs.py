"""Next across codecs and sizes: one connection, VP8 and H.264 stages, by payload type."""

import time

from stage.appkeys import VENUE
from tests.peers import Publisher, Viewer

SIZES = {"VP8": (320, 240), "H264": (640, 360)}


def sized(codec):
    width, height = SIZES[codec]
    return lambda s: s[:2] == (width, height)


async def vp8_and_h264_stages(server, new_stage):
    """Two live stages, a VP8 one and an H.264 one, each at its own size in SIZES."""
    vp8_stage, h264_stage = await new_stage("Vee"), await new_stage("Aitch")
    publishers = [
        await Publisher(server.base, stage["id"], stage["key"]).start(
            video_codec=codec, size=SIZES[codec]
        )
        for stage, codec in ((vp8_stage, "VP8"), (h264_stage, "H264"))
    ]
    return vp8_stage, h264_stage, publishers


async def test_next_between_a_vp8_and_an_h264_stage_both_ways(server, new_stage):
    vp8_stage, h264_stage, publishers = await vp8_and_h264_stages(server, new_stage)
    # An aiortc viewer offers both codecs, as browsers do.
    viewer = await Viewer(server.base).start(stage_id=vp8_stage["id"])
    try:
        await viewer.wait_video(count=10, where=sized("VP8"))
        on_server = server.app[VENUE].viewers[viewer.location.rsplit("/", 1)[1]]
        assert set(on_server.video_codecs) == {"VP8", "H264"}, on_server.video_codecs

        for round_, (target, codec) in enumerate(
            [(h264_stage, "H264"), (vp8_stage, "VP8")] * 2
        ):
            pressed = time.monotonic()
            status, body = await viewer.request("POST", "/next")
            assert status == 200, body
            assert body["stage"]["id"] == target["id"], (round_, body)
            first = await viewer.wait_video(
                count=1, since=pressed, where=sized(codec), timeout=5
            )
            await viewer.wait_video(
                count=20, since=first, where=sized(codec), timeout=5
            )
            stale = [s for s in viewer.video_since(first) if not sized(codec)(s)]
            assert stale == [], (
                f"round {round_}: other frames after the switch {stale[:3]}"
            )
            print(
                f"Next to {codec}: first decoded frame {1000 * (first - pressed):.0f} ms"
            )
        # The pattern's picture, not garbage: the publishers draw a moving pattern whose
        # mean red stays within the range of the source.
        assert all(0 <= s[2] <= 255 for s in viewer.video_since(0))
        assert viewer.pc.connectionState == "connected"
    finally:
        await viewer.stop()
        for publisher in publishers:
            await publisher.stop()


async def test_a_viewer_offering_one_codec_stays_within_it(server, new_stage):
    vp8_stage, h264_stage = await new_stage("Vee"), await new_stage("Aitch")
    publishers = [
        await Publisher(server.base, vp8_stage["id"], vp8_stage["key"]).start(
            video_codec="VP8"
        ),
        await Publisher(server.base, h264_stage["id"], h264_stage["key"]).start(
            video_codec="H264", size=SIZES["H264"]
        ),
    ]
    viewer = await Viewer(server.base).start(
        stage_id=vp8_stage["id"], video_codec="VP8"
    )
    try:
        await viewer.wait_video(count=5)
        status, body = await viewer.request("POST", "/next")
        # The only other stage sends H.264, which this viewer cannot decode.
        assert status == 409, (status, body)
        status, body = await viewer.request("GET")
        assert body["stage"]["id"] == vp8_stage["id"], body
    finally:
        await viewer.stop()
        for publisher in publishers:
            await publisher.stop()
