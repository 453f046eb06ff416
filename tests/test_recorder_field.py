"""Recordings survive what real shows go through: irregular input, a long show, lip sync,
a performer's tab killed without goodbye, a full disk.

Each recording is downloaded through the API, decoded frame by frame, counted again by
ffprobe and fully decoded by ffmpeg (tests/show.py).
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.media import publisher_tracks
from tests.peers import PatternTrack, Publisher, Viewer
from tests.show import (
    BeepTrack,
    CaptureClock,
    FlashTrack,
    assert_plays,
    check_file,
    lip_sync,
)
from tests.test_recorder import wait_recording

ROOT = Path(__file__).resolve().parent.parent
# The ICE consent timeout (RFC 7675): a dead peer is noticed by then at the latest.
CONSENT_TIMEOUT = 30.0


async def download(http, server, stage, performance, folder: Path) -> Path:
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(
        server.base + performance["recording"]["url"], headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        data = await response.read()
    path = folder / f"{performance['id']}.webm"
    path.write_bytes(data)
    return path


async def perform(server, http, new_stage, tmp_path, tracks, seconds, viewer=True):
    """One show: publish `tracks` for `seconds`, end it, return (file, wall seconds)."""
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start(
        tracks=tracks
    )
    began = time.monotonic()
    watcher = await Viewer(server.base).start(stage["id"]) if viewer else None
    await asyncio.sleep(seconds)
    if watcher:
        await watcher.stop()
    await publisher.stop()
    wall = time.monotonic() - began
    performance = await wait_recording(http, server, stage, timeout=60)
    return await download(http, server, stage, performance, tmp_path), wall


async def test_jittered_and_repeated_timestamps_play_end_to_end(
    server, http, new_stage, tmp_path
):
    clock = CaptureClock()
    video = FlashTrack(clock, jitter=0.012, repeat_every=7)
    path, wall = await perform(
        server, http, new_stage, tmp_path, [BeepTrack(clock), video], 8
    )
    checked = check_file(path)
    print(f"jitter: {wall:.2f} s wall, {checked}")
    assert_plays(checked, seconds=wall)
    # A repeated capture time reaches the server as two frames on one RTP timestamp,
    # which its jitter buffer joins: fewer frames than sent is expected, far fewer not.
    assert checked.counts["video"] > video.sent * 0.6, (checked.counts, video.sent)


async def test_audio_starting_two_seconds_after_video(
    server, http, new_stage, tmp_path
):
    clock = CaptureClock()
    tracks = [BeepTrack(clock, delay=2.0), FlashTrack(clock)]
    path, wall = await perform(server, http, new_stage, tmp_path, tracks, 8)
    checked = check_file(path)
    print(f"late audio: {wall:.2f} s wall, {checked.spans}")
    assert_plays(checked, seconds=wall)
    video, audio = checked.spans["video"], checked.spans["audio"]
    # The sound belongs 2 s into the picture, not at its start.
    assert 1.5 < audio[0] - video[0] < 2.5, checked.spans
    assert abs(audio[1] - video[1]) < 0.5, checked.spans


class LateFlashTrack(FlashTrack):
    """A camera that sends nothing for its first `delay` seconds (switched on late)."""

    def __init__(self, clock: CaptureClock, delay: float) -> None:
        super().__init__(clock)
        self.delay = delay

    async def recv(self):
        if self._index is None:
            await self.clock.until(self.delay)
        return await super().recv()


class SilentCamera(FlashTrack):
    """A camera track that is offered but never sends a frame (camera disabled)."""

    async def recv(self):
        await asyncio.sleep(3600)


@pytest.mark.parametrize("late", ["audio", "video"])
async def test_a_track_that_starts_five_seconds_late_is_still_recorded(
    server, http, new_stage, tmp_path, late
):
    # B08, B17: a microphone allowed late, a camera switched on late, or the first
    # keyframe lost from an encoder that ignores PLIs. The recording used to open its
    # file 3 s in with only the tracks seen so far, and the late one was never written.
    clock = CaptureClock()
    if late == "audio":
        tracks = [BeepTrack(clock, delay=5.0), FlashTrack(clock)]
    else:
        tracks = [BeepTrack(clock), LateFlashTrack(clock, delay=5.0)]
    path, wall = await perform(server, http, new_stage, tmp_path, tracks, 10)
    checked = check_file(path)
    print(f"{late} 5 s late: {wall:.2f} s wall, {checked.counts}, {checked.spans}")
    assert_plays(checked, seconds=wall)
    on_time = "video" if late == "audio" else "audio"
    began = checked.spans[late][0] - checked.spans[on_time][0]
    assert 4.0 < began < 6.0, f"the {late} begins {began:.2f} s in: {checked.spans}"
    assert abs(checked.spans[late][1] - checked.spans[on_time][1]) < 0.5, checked.spans


async def test_a_camera_that_never_sends_gives_an_audio_only_file(
    server, http, new_stage, tmp_path
):
    # B05: the camera track is offered but disabled; only sound is ever sent.
    clock = CaptureClock()
    tracks = [BeepTrack(clock), SilentCamera(clock)]
    path, wall = await perform(server, http, new_stage, tmp_path, tracks, 5)
    checked = check_file(path)
    print(f"camera off: {wall:.2f} s wall, {checked.counts}, {checked.probed}")
    assert set(checked.probed) == {"audio"}, f"streams in the file: {checked.probed}"
    assert_plays(checked, kinds=("audio",), seconds=wall)


async def test_camera_resolution_change_mid_show_still_decodes(
    server, http, new_stage, tmp_path
):
    clock = CaptureClock()
    # Sizes change on the capture clock: the track starts a moment after the clock.
    video = FlashTrack(clock, fps=15, sizes=((0.0, 640, 480), (4.0, 1280, 720)))
    path, wall = await perform(
        server, http, new_stage, tmp_path, [BeepTrack(clock), video], 8
    )
    checked = check_file(path)
    print(f"resize: {wall:.2f} s wall, sizes {checked.sizes}, {checked.counts}")
    assert_plays(checked, seconds=wall)
    assert checked.sizes == [(640, 480), (1280, 720)], checked.sizes


async def test_a_camera_switched_with_replace_track_keeps_the_recording_decodable(
    server, http, new_stage, tmp_path
):
    # B18: the performer switches camera mid-show (replaceTrack). aiortc's sender
    # stamps the new camera's frames from its own start, so the RTP clock steps back
    # and the recorder drops a second of "stale" frames, the new camera's keyframe
    # among them: the frames after it must not be written without it. No viewer
    # watches, so nobody else asks the publisher for a keyframe.
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    began = time.monotonic()
    await asyncio.sleep(4)
    (sender,) = [s for s in publisher.pc.getSenders() if s.track.kind == "video"]
    sender.replaceTrack(PatternTrack(width=640, height=360, shade=120))
    await asyncio.sleep(5)
    await publisher.stop()
    wall = time.monotonic() - began
    performance = await wait_recording(http, server, stage)
    path = await download(http, server, stage, performance, tmp_path)
    checked = check_file(path)
    print(f"camera switch: {wall:.2f} s wall, {checked.sizes}, {checked.counts}")
    assert_plays(checked, seconds=wall)
    assert checked.sizes == [(320, 240), (640, 360)], checked.sizes
    assert checked.spans["video"][1] > wall - 1.0, checked.spans


async def test_long_performance_with_real_footage(
    server, http, new_stage, tmp_path, media
):
    # 75 s in CI rather than the 5 minutes of the issue: the same code path, a
    # fifteenth of the machine time on a 2-core runner shared with other work.
    seconds = float(os.environ.get("STAGE_LONG_SHOW_SECONDS", "75"))
    tracks = list(publisher_tracks(media))
    path, wall = await perform(server, http, new_stage, tmp_path, tracks, seconds)
    checked = check_file(path)
    print(f"long show: {wall:.2f} s wall, {checked.counts}, {checked.duration} s")
    assert_plays(checked, seconds=wall)
    assert abs(checked.audio_seconds - checked.duration) < 1.0, checked
    assert checked.counts["video"] > 25 * checked.duration * 0.8, checked


@pytest.mark.alone  # real-time: see pytest.ini
async def test_lip_sync_within_45_ms(server, http, new_stage, tmp_path):
    clock = CaptureClock()
    tracks = [BeepTrack(clock), FlashTrack(clock)]
    path, wall = await perform(server, http, new_stage, tmp_path, tracks, 10)
    checked = check_file(path)
    assert_plays(checked, seconds=wall)
    offsets = lip_sync(checked)
    print(
        "lip sync: audio minus video per flash (ms): "
        + ", ".join(f"{o * 1000:+.0f}" for o in offsets)
    )
    assert len(offsets) >= 6, f"flashes {checked.flashes}, beeps {checked.beeps}"
    worst = max(offsets, key=abs)
    assert abs(worst) <= 0.045, f"lip sync off by {worst * 1000:.0f} ms: {offsets}"


# the performer's tab is killed

PUBLISH_AND_HANG = """
import asyncio, sys
from stage.relay.ice import gather_on
from tests.peers import Publisher

async def main():
    gather_on(("127.0.0.1",))
    await Publisher(sys.argv[1], sys.argv[2], sys.argv[3]).start()
    print("live", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_performer_killed_without_goodbye_finishes_the_recording(
    server, http, new_stage, tmp_path
):
    stage = await new_stage()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PUBLISH_AND_HANG,
            server.base,
            stage["id"],
            stage["key"],
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = await asyncio.get_running_loop().run_in_executor(
            None, child.stdout.readline
        )
        assert line.strip() == "live", line
        began = time.monotonic()
        await asyncio.sleep(5)
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()

    performance = await wait_recording(http, server, stage, timeout=CONSENT_TIMEOUT)
    finished_after = time.monotonic() - killed
    print(f"tab killed: recording ready {finished_after:.1f} s after the kill")
    path = await download(http, server, stage, performance, tmp_path)
    checked = check_file(path)
    assert_plays(checked, seconds=killed - began)


# the disk fills up


@pytest.fixture
def small_disk(settings):
    """Mount a 3 MiB tmpfs as a folder; yields a function that mounts one."""
    mounted = []

    def mount(folder: Path, leave_free: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        # Fill it but for `leave_free` bytes, so that a few seconds of show fill it.
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        (folder / "filler").write_bytes(b"\0" * max(free - leave_free, 0))
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def stage_summary(server, http, stage) -> dict:
    async with http.get(f"{server.base}/api/stages/{stage['id']}") as response:
        return await response.json()


async def test_full_disk_truncates_the_recording_and_the_show_goes_on(
    server, http, new_stage, settings, small_disk, tmp_path
):
    stage = await new_stage()
    small_disk(settings.data / stage["id"], leave_free=100_000)

    clock = CaptureClock()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start(
        tracks=[BeepTrack(clock), FlashTrack(clock, sizes=((0.0, 640, 480),))]
    )
    viewer = await Viewer(server.base).start(stage["id"])
    for _ in range(300):
        summary = await stage_summary(server, http, stage)
        if summary["recording"] and summary["recording"]["state"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert summary["recording"]["state"] == "failed", summary
    assert "full" in summary["recording"]["error"], summary
    assert summary["live"], summary

    # Viewers keep watching after the disk filled.
    since = time.monotonic()
    await viewer.wait_video(count=30, since=since, timeout=10)

    # A new performer, on another stage, goes live and records.
    other = await new_stage("The Next Act")
    newcomer = await Publisher(server.base, other["id"], other["key"]).start()
    second_viewer = await Viewer(server.base).start(other["id"])
    await second_viewer.wait_video(count=30, timeout=10)
    await asyncio.sleep(2)
    await second_viewer.stop()
    await newcomer.stop()
    assert (await wait_recording(http, server, other))["recording"]["bytes"] > 0

    await viewer.stop()
    await publisher.stop()
    performance = await wait_recording(http, server, stage, states=("truncated",))
    path = await download(http, server, stage, performance, tmp_path)
    checked = check_file(path)
    print(f"full disk: kept {checked.spans}, {checked.counts}")
    assert_plays(checked)

    # The same stage can go live again on the full disk: live, watched, nothing kept.
    again = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start(stage["id"])
    await viewer.wait_video(count=30, timeout=10)
    await asyncio.sleep(3)
    await viewer.stop()
    await again.stop()
    performance = await wait_recording(
        http, server, stage, states=("failed", "truncated", "empty")
    )
    assert performance["recording"]["state"] in ("failed", "truncated"), performance
