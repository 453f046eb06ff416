"""Clips of H.264 recordings, and clips of shows with a pause in them.

H.264 arrives as the publisher encoded it (ffmpeg's WHIP muxer, an aiortc publisher) and
is recorded as it came; a clip cut between two keyframes must still decode frame by
frame, carry the stream's parameter sets, and get its poster. A show whose publisher
paused keeps the pause in every clip format: the sound after it stays with the picture.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy

from tests.clocks import Paused
from tests.peers import Publisher, only
from tests.show import (
    BeepTrack,
    CaptureClock,
    FlashTrack,
    assert_plays,
    check_file,
    lip_sync,
)
from tests.test_clips import fetch, ready_clip
from tests.test_ffmpeg_whip import download_recording, ffmpeg_publishing
from tests.test_recorder import wait_recording

CLIP_SECONDS = 4.0


def keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [
            float(p.pts * p.time_base)
            for p in container.demux(video=0)
            if p.size and p.is_keyframe
        ]


def between_keyframes(keyframes: list[float], after: float) -> float:
    """A start at least 0.2 s past a keyframe and 0.2 s before the next one."""
    for here, following in zip(keyframes, keyframes[1:] + [float("inf")]):
        start = here + 0.2
        if start >= after and following - start > 0.2:
            return round(start, 3)
    raise AssertionError(f"no room between keyframes {keyframes}")


def video_counts(path: Path) -> tuple[int, int]:
    """(packets, decoded pictures) of the first video track."""
    with av.open(str(path)) as container:
        packets = sum(1 for p in container.demux(video=0) if p.size)
    with av.open(str(path)) as container:
        pictures = sum(1 for _ in container.decode(video=0))
    return packets, pictures


async def clip_and_check(server, http, stage, performance, recording, tmp_path):
    start = between_keyframes(keyframe_times(recording), after=1.0)
    end = start + CLIP_SECONDS
    clip = await ready_clip(server, http, stage, performance, start, end)

    for kind in ("recorded", "mp4"):
        path = await fetch(server, http, clip[kind], tmp_path, f"clip-{kind}")
        checked = check_file(path)
        print(f"{kind} from {start} s: {checked.counts}, spans {checked.spans}")
        assert_plays(checked)
        packets, pictures = video_counts(path)
        # Every packet is a picture, and the pictures fill the clip (about 30 fps).
        assert pictures == packets, f"{kind}: {pictures} of {packets} packets decode"
        assert pictures > CLIP_SECONDS * 30 * 0.8, (kind, pictures)
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"

    poster = await fetch(server, http, clip["poster"], tmp_path, "poster.jpg")
    with av.open(str(poster)) as container:
        assert next(container.decode(video=0)).width > 0
    return tmp_path / "clip-recorded"


async def test_a_clip_of_ffmpeg_h264_cut_between_keyframes_decodes_whole(
    server, http, new_stage, media, ffmpeg, tmp_path
):
    stage = await new_stage("ffmpeg")
    url = f"{server.base}/whip/{stage['id']}"
    log = tmp_path / "ffmpeg.log"
    async with ffmpeg_publishing(ffmpeg, media, url, stage["key"], log) as process:
        await asyncio.wait_for(process.wait(), 40)
    recording = await download_recording(
        server, http, stage, tmp_path / "recording.mkv"
    )
    performance = await wait_recording(http, server, stage)
    await clip_and_check(server, http, stage, performance, recording, tmp_path)


async def test_a_clip_of_aiortc_h264_cut_between_keyframes_decodes_whole(
    server, http, new_stage, tmp_path
):
    stage = await new_stage("aiortc H.264")
    clock = CaptureClock()
    publisher = Publisher(server.base, stage["id"], stage["key"])
    publisher.pc.addTransceiver(BeepTrack(clock), direction="sendonly")
    video = publisher.pc.addTransceiver(FlashTrack(clock), direction="sendonly")
    only(video, "H264")
    await publisher.start(audio=False, video=False)
    await asyncio.sleep(9)
    await publisher.stop()
    performance = await wait_recording(http, server, stage)
    recording = await download_recording(
        server, http, stage, tmp_path / "recording.mkv"
    )
    clip = await clip_and_check(server, http, stage, performance, recording, tmp_path)
    # The flashes and beeps stay together in the as-recorded clip.
    assert lip_sync(check_file(clip)), "no flash with a beep near it"


async def test_a_clip_across_a_pause_keeps_the_sound_with_the_picture(
    server, http, new_stage, tmp_path
):
    stage = await new_stage("Pause")
    clock = CaptureClock()
    # Both tracks go quiet from 3 s to 6 s of the capture clock, which runs on.
    tracks = [
        Paused(BeepTrack(clock), at=3.0, length=3.0),
        Paused(FlashTrack(clock), at=3.0, length=3.0),
    ]
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start(
        tracks=tracks
    )
    await asyncio.sleep(10)
    await publisher.stop()
    performance = await wait_recording(http, server, stage)
    recording = await download_recording(
        server, http, stage, tmp_path / "recording.webm"
    )
    source = check_file(recording)
    source_sync = lip_sync(source)
    assert source_sync, (source.flashes, source.beeps)

    start, end = 1.0, performance["duration"] - 1.0
    clip = await ready_clip(server, http, stage, performance, start, end)

    for kind in ("recorded", "mp4"):
        path = await fetch(server, http, clip[kind], tmp_path, f"clip-{kind}")
        checked = check_file(path)
        offsets = lip_sync(checked)
        print(f"{kind}: spans {checked.spans}, lip sync {offsets}")
        assert_plays(checked, audio_hole=4.0)
        video, audio = checked.spans["video"], checked.spans["audio"]
        assert abs(audio[0] - video[0]) < 0.1, checked.spans
        assert abs(audio[1] - video[1]) < 0.2, checked.spans
        # Beeps after the pause are where the recording had them, less the start.
        later = [b - start for b in source.beeps if b > 6.5 and b < end - 0.2]
        assert later, source.beeps
        for beep in later:
            nearest = min(checked.beeps, key=lambda b: abs(b - beep))
            assert abs(nearest - beep) < 0.05, (kind, beep, checked.beeps)
        assert offsets, (checked.flashes, checked.beeps)
        shift = numpy.median(offsets) - numpy.median(source_sync)
        assert abs(shift) <= 0.02, f"{kind} moved audio by {shift * 1000:.0f} ms"
