"""Tests of the test harness itself: real media (tests/media.py) and Chromium (tests/browser.py)."""

from __future__ import annotations

import array
import asyncio
import math
import shutil
import subprocess
import sys
import textwrap
import time

import av
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from tests.browser import new_page, screenshot
from tests.media import (
    AUDIO_SAMPLES_PER_FRAME,
    REPO,
    LoopingAudioTrack,
    LoopingVideoTrack,
    ensure_media,
    publisher_tracks,
)

# --------------------------------------------------------------------------- helpers


def luma_rows(frame: av.VideoFrame, step: int = 1) -> bytes:
    """The Y plane without line padding (every `step`-th byte of each row)."""
    plane = frame.planes[0]
    data = memoryview(plane)
    ls, w = plane.line_size, frame.width
    return b"".join(
        bytes(data[r * ls : r * ls + w : step]) for r in range(frame.height)
    )


def mean_abs_diff(a: bytes, b: bytes) -> float:
    assert len(a) == len(b)
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def std(values: bytes) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def s16_samples(frame: av.AudioFrame) -> array.array:
    arr = array.array("h")
    arr.frombytes(
        bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]
    )
    return arr


# --------------------------------------------------------------------------- files


def test_camera_y4m_is_640x480_30fps_real_motion(media):
    assert media.camera.name == "camera.y4m"
    with media.camera.open("rb") as fh:
        header = fh.readline()
    assert header.startswith(b"YUV4MPEG2 ")
    assert b" W640 " in header and b" H480 " in header and b" F30:1 " in header
    assert b" C420" in header  # 4:2:0 as Chromium's fake capture requires

    frames = []
    with av.open(str(media.camera)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 30
        for frame in container.decode(stream):
            assert (frame.width, frame.height) == (640, 480)
            assert frame.format.name == "yuv420p"
            frames.append(luma_rows(frame, step=4))
    assert len(frames) == 180  # 6 s at 30 fps

    # Real footage: textured pictures, and they change from frame to frame.
    for i in (0, 90, 179):
        assert 16 < sum(frames[i]) / len(frames[i]) < 235
        assert std(frames[i]) > 10
    # The 25 fps source is shown at 30 fps, so one frame in six repeats its predecessor;
    # every other step is a new picture, and no picture is held for three frames.
    still = [mean_abs_diff(frames[i], frames[i + 1]) == 0 for i in range(179)]
    assert sum(still) <= 31, sum(still)
    assert not any(a and b for a, b in zip(still, still[1:]))
    assert mean_abs_diff(frames[0], frames[150]) > 5


def test_music_wav_is_48k_stereo_s16_and_not_silent(media):
    with av.open(str(media.music)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "pcm_s16le"
        assert stream.rate == 48000
        assert len(stream.layout.channels) == 2
        samples = array.array("h")
        for frame in container.decode(stream):
            assert frame.format.name == "s16"
            samples.extend(s16_samples(frame))
    assert len(samples) == 2 * 48000 * 6
    peak = max(max(samples), -min(samples))
    rms = math.sqrt(sum(s * s for s in samples[::7]) / len(samples[::7]))
    assert peak > 0.2 * 32768, peak
    assert rms > 0.02 * 32768, rms
    # Music, not a constant or a pure tone: many distinct sample values, both channels.
    assert len(set(samples[::3])) > 5000
    assert samples[0::2] != samples[1::2] or rms > 0


def test_sources_are_the_real_packaged_media(media):
    assert media.source_video.name == "bikes.mp4"
    assert (
        media.source_audio.name.startswith("loop_")
        and media.source_audio.suffix == ".flac"
    )
    with av.open(str(media.source_video)) as c:
        v = c.streams.video[0]
        assert (
            v.codec_context.name,
            v.codec_context.width,
            v.codec_context.height,
        ) == (
            "h264",
            640,
            272,
        )
    with av.open(str(media.source_audio)) as c:
        assert c.streams.audio[0].codec_context.name == "flac"


def test_ensure_media_is_warm_and_safe_across_processes(media, tmp_path):
    # Warm call on the shared cache: no work.
    t0 = time.monotonic()
    again = ensure_media(media.camera.parent)
    assert again == media
    assert time.monotonic() - t0 < 1.0

    # Cold build in a new cache by three processes at once. The sources are seeded
    # so no download is repeated; the conversion itself must run once, under the lock.
    cache = tmp_path / "cache"
    (cache / "src").mkdir(parents=True)
    for src in (media.source_video, media.source_audio):
        shutil.copyfile(src, cache / "src" / src.name)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from tests.media import ensure_media
        m = ensure_media(Path({str(cache)!r}))
        print(m.camera.stat().st_size, m.music.stat().st_size)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        outs.append(out.split())
    assert outs[0] == outs[1] == outs[2]
    assert int(outs[0][0]) == media.camera.stat().st_size
    assert int(outs[0][1]) == media.music.stat().st_size
    assert (cache / "camera.y4m").read_bytes() == media.camera.read_bytes()
    assert not list(cache.glob(".*.part"))


# --------------------------------------------------------------------------- aiortc tracks


async def test_publisher_tracks_real_time_increasing_pts(media):
    audio, video = publisher_tracks(media)
    assert (audio.kind, video.kind) == ("audio", "video")

    async def take_video(n):
        out = []
        for _ in range(n):
            f = await video.recv()
            out.append((time.monotonic(), f))
        return out

    async def take_audio(n):
        out = []
        for _ in range(n):
            f = await audio.recv()
            out.append((time.monotonic(), f))
        return out

    t0 = time.monotonic()
    vids, auds = await asyncio.gather(take_video(46), take_audio(101))
    try:
        # Video: 640x480, 90 kHz clock, +3000 per frame, 45 intervals = 1.5 s.
        for _, f in vids:
            assert (f.width, f.height) == (640, 480)
            assert f.time_base.denominator == 90000
        pts = [f.pts for _, f in vids]
        assert pts[0] == 0
        assert all(b - a == 3000 for a, b in zip(pts, pts[1:]))
        span = vids[-1][0] - vids[0][0]
        assert 1.4 < span < 1.9, span  # never faster than real time; slack for load
        assert mean_abs_diff(luma_rows(vids[0][1], 8), luma_rows(vids[45][1], 8)) > 1

        # Audio: 20 ms frames of s16 stereo 48 kHz, 100 intervals = 2.0 s.
        for _, f in auds:
            assert f.samples == AUDIO_SAMPLES_PER_FRAME
            assert f.sample_rate == 48000
            assert f.format.name == "s16"
            assert len(f.layout.channels) == 2
        apts = [f.pts for _, f in auds]
        assert apts[0] == 0
        assert all(b - a == 960 for a, b in zip(apts, apts[1:]))
        aspan = auds[-1][0] - auds[0][0]
        assert 1.9 < aspan < 2.4, aspan
        assert max(max(s16_samples(f)) for _, f in auds) > 3000
        assert time.monotonic() - t0 < 3.5
    finally:
        audio.stop()
        video.stop()
    with pytest.raises(MediaStreamError):
        await video.recv()
    with pytest.raises(MediaStreamError):
        await audio.recv()


async def test_publisher_tracks_are_independent(media):
    a1, v1 = publisher_tracks(media)
    a2, v2 = publisher_tracks(media)
    try:
        assert v1 is not v2 and a1 is not a2
        first1 = await v1.recv()
        for _ in range(5):
            await v1.recv()
        first2 = await v2.recv()
        assert first2.pts == 0  # v2 did not advance with v1
        assert luma_rows(first1, 8) == luma_rows(first2, 8)
        b1 = bytes((await a1.recv()).planes[0])
        await a1.recv()
        b2 = bytes((await a2.recv()).planes[0])
        assert b1 == b2
        v1.stop()  # stopping one player leaves the other running
        assert (await v2.recv()).pts == 3000
    finally:
        for t in (a1, v1, a2, v2):
            t.stop()


async def test_tracks_loop_forever_without_pts_going_back(media):
    # Played 40x faster than real time only to cross the loop point quickly.
    video = LoopingVideoTrack(media.camera, speed=40)
    audio = LoopingAudioTrack(media.music, speed=40)
    try:
        vframes = [await video.recv() for _ in range(185)]  # 180 frames per loop
        assert [f.pts for f in vframes] == [i * 3000 for i in range(185)]
        for k in (0, 3):
            assert luma_rows(vframes[k], 4) == luma_rows(vframes[180 + k], 4)
        aframes = [
            bytes((await audio.recv()).planes[0]) for _ in range(305)
        ]  # 300 per loop
        for k in (0, 1, 4):
            assert aframes[k] == aframes[300 + k]
        f = await audio.recv()
        assert f.pts == 305 * 960
    finally:
        video.stop()
        audio.stop()


async def test_publisher_tracks_through_aiortc_on_loopback(media, monkeypatch):
    """The tracks encode and decode through real aiortc peer connections (127.0.0.1 only)."""
    from aioice import ice

    monkeypatch.setattr(
        ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    )
    config = RTCConfiguration(iceServers=[])  # no STUN: nothing leaves this machine
    sender, receiver = RTCPeerConnection(config), RTCPeerConnection(config)
    audio, video = publisher_tracks(media)
    got: dict[str, asyncio.Future] = {
        "audio": asyncio.get_running_loop().create_future(),
        "video": asyncio.get_running_loop().create_future(),
    }

    @receiver.on("track")
    def on_track(track):
        async def pull():
            try:
                frame = None
                for _ in range(3 if track.kind == "video" else 10):
                    frame = await track.recv()
                if not got[track.kind].done():
                    got[track.kind].set_result(frame)
            except Exception as exc:  # noqa: BLE001
                if not got[track.kind].done():
                    got[track.kind].set_exception(exc)

        asyncio.ensure_future(pull())

    try:
        sender.addTrack(audio)
        sender.addTrack(video)
        await sender.setLocalDescription(await sender.createOffer())
        for line in sender.localDescription.sdp.splitlines():
            if line.startswith("a=candidate:"):
                assert " 127.0.0.1 " in line, line
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        vframe = await asyncio.wait_for(got["video"], 15)
        aframe = await asyncio.wait_for(got["audio"], 15)
        assert (vframe.width, vframe.height) == (640, 480)
        assert aframe.sample_rate == 48000
    finally:
        audio.stop()
        video.stop()
        await sender.close()
        await receiver.close()


# --------------------------------------------------------------------------- Chromium

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fake capture</title></head>
<body style="margin:0;background:#222">
<video id="v" autoplay muted playsinline width="640" height="480"></video>
<canvas id="c" width="160" height="120" style="display:none"></canvas>
</body></html>
"""

GUM_JS = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
  window.__stream = stream;
  const v = document.getElementById('v');
  v.srcObject = stream;
  await v.play();
  const [vt] = stream.getVideoTracks();
  const [at] = stream.getAudioTracks();
  const s = vt.getSettings();
  return {video: vt.readyState, audio: at && at.readyState, label: vt.label,
          width: s.width, height: s.height, frameRate: s.frameRate,
          vw: v.videoWidth, vh: v.videoHeight};
}"""

LUMA_JS = """() => {
  const v = document.getElementById('v'), c = document.getElementById('c');
  const g = c.getContext('2d', {willReadFrequently: true});
  g.drawImage(v, 0, 0, c.width, c.height);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) out.push((d[i] * 299 + d[i+1] * 587 + d[i+2] * 114) / 1000 | 0);
  return out;
}"""

AUDIO_RMS_JS = """async () => {
  const ctx = new AudioContext();
  await ctx.resume();
  const src = ctx.createMediaStreamSource(window.__stream);
  const an = ctx.createAnalyser();
  an.fftSize = 2048;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  let best = 0;
  for (let i = 0; i < 20; i++) {
    await new Promise(r => setTimeout(r, 50));
    an.getFloatTimeDomainData(buf);
    let s = 0; for (const x of buf) s += x * x;
    best = Math.max(best, Math.sqrt(s / buf.length));
  }
  await ctx.close();
  return best;
}"""

CANDIDATES_JS = """async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  const cands = [];
  const done = new Promise(resolve => {
    pc.onicecandidate = e => { if (e.candidate) cands.push(e.candidate.candidate); else resolve(); };
    setTimeout(resolve, 5000);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await done;
  pc.close();
  return cands;
}"""


@pytest.fixture
async def page_server():
    """A tiny page on http://127.0.0.1:<port>/ (getUserMedia needs a secure context;
    about:blank and data: URLs are not one, loopback http is)."""
    app = web.Application()

    async def index(_request):
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_chromium_fake_capture_plays_the_real_media(
    chromium, page_server, tmp_path
):
    page = await new_page(chromium, origin=page_server)
    await page.goto(page_server + "/")
    info = await page.evaluate(GUM_JS)
    assert info["video"] == "live" and info["audio"] == "live", info
    assert (info["width"], info["height"]) == (640, 480), info
    assert (info["vw"], info["vh"]) == (640, 480), info
    assert round(info["frameRate"]) == 30, info

    # The picture is the footage (textured, moving), not a blank or frozen frame.
    await page.wait_for_timeout(300)
    a = await page.evaluate(LUMA_JS)
    mean = sum(a) / len(a)
    assert 16 < mean < 235, mean
    assert std(bytes(a)) > 10
    moved = []
    for _ in range(5):  # a loaded machine may hold a frame a little longer
        await page.wait_for_timeout(500)
        b = await page.evaluate(LUMA_JS)
        moved.append(mean_abs_diff(bytes(a), bytes(b)))
        if moved[-1] > 1:
            break
    assert moved[-1] > 1, moved

    # The microphone carries the music loop.
    rms = await page.evaluate(AUDIO_RMS_JS)
    assert rms > 0.02, rms

    shot = await screenshot(page, tmp_path / "fake-capture.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000


async def test_chromium_gathers_loopback_without_mdns(chromium_synthetic, page_server):
    # A receive-only viewer page without camera/microphone permission: the case in
    # which Chromium would hide its addresses behind mDNS names.
    context = await chromium_synthetic.new_context()
    page = await context.new_page()
    await page.goto(page_server + "/")
    cands = await page.evaluate(CANDIDATES_JS)
    assert cands, "no ICE candidates gathered"
    assert not [c for c in cands if ".local" in c], cands
    assert [c for c in cands if " 127.0.0.1 " in c], cands


async def test_insecure_pages_have_no_getusermedia(chromium_synthetic):
    # Documented limitation: tests must serve their page from http://127.0.0.1.
    page = await new_page(chromium_synthetic)
    await page.goto("about:blank")
    assert (
        await page.evaluate(
            "!!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)"
        )
        is False
    )
