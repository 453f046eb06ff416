"""A publisher no one here wrote: ffmpeg's own WHIP muxer sending H.264 + Opus.

The ffmpeg is the static build in the `imageio-ffmpeg` wheel (ffmpeg 9 has `-f whip`;
Debian's does not). It publishes the real footage and music from tests/media.py, with
the flags TESTING.md gives for WebRTC-friendly H.264. What it sends must reach an H.264
viewer as ffmpeg encoded it, be answered with the profile it sends (B32), be recorded
to Matroska that decodes, and never be given to a viewer that can only take VP8.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import av

from stage.appkeys import VENUE
from tests.peers import Viewer
from tests.test_server_contract import live_ids

# Seconds of media ffmpeg sends before it ends by itself (and sends its DELETE).
SECONDS = 8


@contextlib.asynccontextmanager
async def ffmpeg_publishing(
    ffmpeg, media, url: str, key: str, log: Path, seconds: float = SECONDS
):
    """ffmpeg publishing for `seconds`; killed on the way out if it is still running."""
    command = [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "verbose",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        str(media.camera),
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        str(media.music),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-tune",
        "zerolatency",
        "-preset",
        "veryfast",
        "-bf",
        "0",
        "-g",
        "30",
        "-b:v",
        "1M",
        "-c:a",
        "libopus",
        "-ac",
        "2",
        "-ar",
        "48000",
        "-f",
        "whip",
        "-authorization",
        key,
        url,
    ]
    with open(log, "wb") as out:
        process = await asyncio.create_subprocess_exec(*command, stdout=out, stderr=out)
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def fmtp_profiles(text: str) -> list[str]:
    return re.findall(r"profile-level-id=([0-9a-fA-F]{6})", text)


def ffmpeg_sdp(log: Path) -> tuple[str, str]:
    """The offer and the answer as ffmpeg logged them at -loglevel verbose."""
    text = log.read_text(errors="replace")
    offer_at = text.find("offer: v=0")
    answer_at = text.find("answer: v=0")
    assert offer_at != -1 and answer_at != -1, f"ffmpeg logged no SDP:\n{text[-3000:]}"
    return text[offer_at:answer_at], text[answer_at : answer_at + 6000]


async def wait_for(predicate, what: str, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"{what} within {timeout} s\n{tail}")
        await asyncio.sleep(0.05)


async def download_recording(server, http, stage, path: Path, timeout=20) -> Path:
    """Wait for the stage's newest recording to be ready, and save it at `path`."""

    async def ready_recording():
        async with http.get(
            f"{server.base}/api/stages/{stage['id']}/performances",
            headers={"Authorization": f"Bearer {stage['key']}"},
        ) as response:
            performances = (await response.json())["performances"]
        recording = performances[0]["recording"] if performances else None
        return recording if recording and recording["state"] == "ready" else None

    try:
        recording = await wait_for(ready_recording, "no ready recording", timeout)
    except AssertionError as waited:
        async with http.get(
            f"{server.base}/api/stages/{stage['id']}/performances",
            headers={"Authorization": f"Bearer {stage['key']}"},
        ) as response:
            performances = await response.text()
        raise AssertionError(f"no ready recording: {performances}") from waited
    async with http.get(
        server.base + recording["url"],
        headers={"Authorization": f"Bearer {stage['key']}"},
    ) as response:
        assert response.status == 200, response.status
        path.write_bytes(await response.read())
    return path


def sps_profile_level_id(path: Path) -> str | None:
    """profile-level-id of the first SPS in a file's H.264 extradata or packets."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        blobs = [bytes(stream.codec_context.extradata or b"")]
        for packet in container.demux(stream):
            blobs.append(bytes(packet))
            if len(blobs) > 3:
                break
    for blob in blobs:
        # avcC extradata: version, profile, constraints, level at bytes 1..3.
        if blob[:1] == b"\x01" and len(blob) > 4:
            return blob[1:4].hex()
        position = blob.find(b"\x00\x00\x01")
        while position != -1 and position + 7 <= len(blob):
            if blob[position + 3] & 0x1F == 7:
                return blob[position + 4 : position + 7].hex()
            position = blob.find(b"\x00\x00\x01", position + 3)
    return None


def decode_counts(path: Path) -> dict:
    counts = {"audio": 0, "video": 0}
    with av.open(str(path)) as container:
        assert container.format.name.startswith("matroska"), container.format.name
        codecs = {s.type: s.codec_context.name for s in container.streams}
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            counts[kind] += 1
    counts["codecs"] = codecs
    return counts


async def test_ffmpeg_publishes_h264_to_an_h264_viewer_and_the_recording(
    server, http, new_stage, media, ffmpeg, tmp_path
):
    stage = await new_stage("ffmpeg")
    log = tmp_path / "ffmpeg.log"
    url = f"{server.base}/whip/{stage['id']}"

    async with ffmpeg_publishing(ffmpeg, media, url, stage["key"], log) as process:
        launched = time.monotonic()

        async def is_live():
            return stage["id"] in await live_ids(server, http)

        await wait_for(is_live, "ffmpeg's stage is not live", 20, log)
        live_after = time.monotonic() - launched

        viewer = await Viewer(server.base).start(
            stage_id=stage["id"], video_codec="H264"
        )
        try:
            first = await viewer.wait_video(count=1, timeout=10)
            await viewer.wait_video(count=30, timeout=10)
            first_frame_after = first - launched
            sizes = {s[:2] for s in viewer.video_since(0)}
            assert sizes == {(media.width, media.height)}, sizes

            # The server sends packets as they came: nothing on its side encodes.
            server_viewer = next(iter(server.app[VENUE].viewers.values()))
            assert server_viewer.video_codec == "H264"
            assert server_viewer.tracks["video"].forwarded >= 30
            viewer_answer = viewer.pc.remoteDescription.sdp
        finally:
            await viewer.stop()

        returncode = await asyncio.wait_for(process.wait(), SECONDS + 20)
    assert returncode == 0, log.read_text(errors="replace")[-3000:]
    print(
        f"\nffmpeg WHIP: launch -> live {live_after:.2f} s, "
        f"launch -> first decoded frame at an H.264 viewer {first_frame_after:.2f} s"
    )

    # ffmpeg's DELETE ended the performance; its recording is Matroska and decodes.
    path = await download_recording(server, http, stage, tmp_path / "recording.mkv")
    counts = decode_counts(path)
    assert counts["codecs"] == {"video": "h264", "audio": "opus"}, counts
    # ffmpeg sent about SECONDS at 30 fps: far more than half of it must decode.
    assert counts["video"] >= SECONDS * 30 // 2, counts
    assert counts["audio"] >= SECONDS * 50 // 2, counts

    # The recorded bytes are ffmpeg's: x264 signs its first keyframe with its options.
    with av.open(str(path)) as container:
        first_packet = bytes(next(container.demux(container.streams.video[0])))
    assert b"x264 - core" in first_packet and b"keyint=30" in first_packet, (
        "the first recorded keyframe lacks ffmpeg's x264 signature: re-encoded?"
    )

    # B32: both answers name the profile that is really sent.
    offer, answer = ffmpeg_sdp(log)
    sent = sps_profile_level_id(path)
    assert sent is not None, "no SPS in the recording"
    assert fmtp_profiles(answer) == fmtp_profiles(offer), (
        f"the publisher's answer names {fmtp_profiles(answer)}, "
        f"ffmpeg offered {fmtp_profiles(offer)}"
    )
    answered = fmtp_profiles(viewer_answer)
    assert len(answered) == 1, f"the viewer's answer names {answered}"
    assert answered[0].lower() == sent.lower(), (
        f"the viewer was answered profile-level-id {answered[0]} but the stream's "
        f"SPS says {sent}"
    )


async def test_a_vp8_only_viewer_is_not_sent_to_an_h264_stage(
    server, http, new_stage, media, ffmpeg, tmp_path
):
    stage = await new_stage("ffmpeg")
    log = tmp_path / "ffmpeg.log"
    url = f"{server.base}/whip/{stage['id']}"
    async with ffmpeg_publishing(ffmpeg, media, url, stage["key"], log):

        async def is_live():
            return stage["id"] in await live_ids(server, http)

        await wait_for(is_live, "ffmpeg's stage is not live", 20, log)

        vp8 = await Viewer(server.base).start(video_codec="VP8")
        h264 = await Viewer(server.base).start(video_codec="H264")
        try:
            await h264.wait_video(count=10, timeout=10)
            status, body = await vp8.request("GET")
            assert status == 200 and body == {"stage": None}, (
                f"a VP8-only viewer was put on an H.264 stage: {body}"
            )
            assert vp8.frames["video"] == [], "the VP8-only viewer got video"
            status, body = await h264.request("GET")
            assert body["stage"]["id"] == stage["id"], body
        finally:
            await vp8.stop()
            await h264.stop()


async def test_an_ffmpeg_show_outlasts_consent_checks_it_never_answers(
    server, http, new_stage, media, ffmpeg, tmp_path, monkeypatch
):
    """ffmpeg's WHIP muxer answers no ICE consent checks (RFC 7675): aioice closed its
    connection after 6 unanswered checks, about 30 s into every show. The checks are
    made 20 times as frequent here (1.5 s to expire) so that the show can be short."""
    from aioice import ice

    monkeypatch.setattr(ice, "CONSENT_INTERVAL", 0.25)
    stage = await new_stage("Long ffmpeg")
    log = tmp_path / "ffmpeg.log"
    url = f"{server.base}/whip/{stage['id']}"
    seconds = 6
    async with ffmpeg_publishing(
        ffmpeg, media, url, stage["key"], log, seconds=seconds
    ) as process:

        async def is_live():
            return stage["id"] in await live_ids(server, http)

        await wait_for(is_live, "ffmpeg's stage is not live", 20, log)
        # Past 4 expiry times the stage is still live on its first connection.
        await asyncio.sleep(4)
        assert await is_live(), log.read_text(errors="replace")[-2000:]
        publisher = next(iter(server.app[VENUE].publishers.values()))
        assert publisher.pc.connectionState == "connected"
        returncode = await asyncio.wait_for(process.wait(), seconds + 20)
    assert returncode == 0, log.read_text(errors="replace")[-3000:]
    async with http.get(
        f"{server.base}/api/stages/{stage['id']}/performances",
        headers={"Authorization": f"Bearer {stage['key']}"},
    ) as response:
        performances = (await response.json())["performances"]
    assert len(performances) == 1, performances
