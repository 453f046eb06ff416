"""What a real show sends, and how a recording of it is checked.

Tracks: a picture that flashes and a tone that beeps at the same instants, timed the
way a browser times them. Both read one capture clock; each frame's pts is the moment
it was captured on that clock (video on 90 kHz, audio counted in samples), and aiortc's
senders add their own random RTP origins and send sender reports from their send times,
as a browser does. Irregular input (jittered or repeated capture times, audio that
starts late, a camera that changes size) is a parameter of the tracks.

Checks: every recording is decoded frame by frame with PyAV, counted again by Debian's
ffprobe, and fully decoded by Debian's ffmpeg, which must print nothing at `-v error`.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48000)
SAMPLES = 960  # 20 ms of audio per frame, like a browser's Opus
FLASH_EVERY = 1.0  # seconds between flashes (and beeps)
FLASH_LENGTH = 0.1  # seconds a flash (and a beep) lasts


class CaptureClock:
    """The one clock both tracks of a show are captured on."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start

    async def until(self, t: float) -> None:
        delay = self.start + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def flashing(t: float) -> bool:
    return (t % FLASH_EVERY) < FLASH_LENGTH


class FlashTrack(MediaStreamTrack):
    """Dark picture with a moving bar, all white for 100 ms every second.

    `sizes` is a list of (from_second, width, height); `jitter` moves each capture time
    by up to that many seconds either way; `repeat_every` gives every n-th frame the
    capture time of the one before it.
    """

    kind = "video"

    def __init__(
        self,
        clock: CaptureClock,
        fps: int = 30,
        sizes=((0.0, 320, 240),),
        jitter: float = 0.0,
        repeat_every: int = 0,
        seed: int = 5,
    ) -> None:
        super().__init__()
        self.clock, self.fps = clock, fps
        self.sizes = sorted(sizes)
        self.jitter, self.repeat_every = jitter, repeat_every
        self._random = random.Random(seed)
        self._index: int | None = None
        self._last_pts = -1
        self.sent = 0

    def _size(self, t: float) -> tuple[int, int]:
        width, height = self.sizes[0][1:]
        for since, w, h in self.sizes:
            if t >= since:
                width, height = w, h
        return width, height

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._index is None:
            self._index = int(self.clock.now() * self.fps) + 1
        t = self._index / self.fps
        await self.clock.until(t)
        self._index += 1

        width, height = self._size(t)
        shade = 255 if flashing(t) else 24
        image = numpy.full((height, width, 3), shade, numpy.uint8)
        x = (self._index * 8) % width
        image[:, x : x + 16] = 160
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")

        captured = t + self._random.uniform(-self.jitter, self.jitter)
        pts = round(captured / VIDEO_TIME_BASE)
        if self.repeat_every and self._index % self.repeat_every == 0:
            pts = self._last_pts
        frame.pts = max(pts, self._last_pts)
        frame.time_base = VIDEO_TIME_BASE
        self._last_pts = frame.pts
        self.sent += 1
        return frame


class BeepTrack(MediaStreamTrack):
    """Silence with a 1 kHz beep for 100 ms every second, from `delay` seconds on.

    A microphone hands over 20 ms of samples once they are captured, so each frame is
    released at the end of the time it covers.
    """

    kind = "audio"

    def __init__(self, clock: CaptureClock, delay: float = 0.0) -> None:
        super().__init__()
        self.clock, self.delay = clock, delay
        self._first: int | None = None  # sample count on the capture clock
        self._next = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._first is None:
            start = max(self.clock.now(), self.delay)
            self._first = self._next = int(start * 48000) // SAMPLES * SAMPLES
        await self.clock.until((self._next + SAMPLES) / 48000)

        t = (self._next + numpy.arange(SAMPLES)) / 48000
        beep = (t % FLASH_EVERY) < FLASH_LENGTH
        samples = numpy.where(beep, numpy.sin(2 * numpy.pi * 1000 * t) * 12000, 0)
        frame = av.AudioFrame.from_ndarray(
            samples.astype(numpy.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = self._next
        frame.time_base = AUDIO_TIME_BASE
        self._next += SAMPLES
        return frame


# checking a file


@dataclass
class Checked:
    counts: dict = field(default_factory=dict)  # decoded frames per kind (PyAV)
    probed: dict = field(default_factory=dict)  # frames per kind (ffprobe)
    spans: dict = field(default_factory=dict)  # (first, last) seconds per kind
    duration: float | None = None  # what the header says
    audio_seconds: float = 0.0  # decoded samples / rate
    audio_gap: float = 0.0  # longest hole between decoded audio frames
    sizes: list = field(default_factory=list)  # picture sizes in order of appearance
    errors: str = ""  # what ffmpeg said decoding the whole file at -v error
    flashes: list = field(default_factory=list)  # seconds a bright run starts
    beeps: list = field(default_factory=list)  # seconds a beep starts


def check_file(path: Path) -> Checked:
    checked = Checked()
    _decode(path, checked)
    checked.probed = ffprobe_frames(path)
    checked.errors = ffmpeg_errors(path)
    return checked


def _decode(path: Path, checked: Checked) -> None:
    audio_end = None
    bright = False
    envelope: list[tuple[float, numpy.ndarray]] = []
    with av.open(str(path)) as container:
        if container.duration:
            checked.duration = container.duration / 1e6
        for frame in container.decode(*container.streams):
            t = float(frame.pts * frame.time_base)
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            checked.counts[kind] = checked.counts.get(kind, 0) + 1
            low, high = checked.spans.get(kind, (t, t))
            checked.spans[kind] = (min(low, t), max(high, t))
            if kind == "video":
                size = (frame.width, frame.height)
                if not checked.sizes or checked.sizes[-1] != size:
                    checked.sizes.append(size)
                luma = frame.to_ndarray(format="gray").mean()
                if luma > 180 and not bright:
                    checked.flashes.append(t)
                bright = luma > 180
            else:
                samples = numpy.abs(frame.to_ndarray().astype(numpy.float32))
                if frame.format.is_planar:
                    mono = samples.mean(axis=0)
                else:
                    mono = samples.reshape(frame.samples, -1).mean(axis=1)
                envelope.append((t, mono))
                checked.audio_seconds += frame.samples / frame.sample_rate
                if audio_end is not None:
                    checked.audio_gap = max(checked.audio_gap, t - audio_end)
                audio_end = t + frame.samples / frame.sample_rate
    checked.beeps = _onsets(envelope)


def _onsets(envelope) -> list[float]:
    """Start times of beeps: where the level first rises well above silence."""
    if not envelope:
        return []
    peak = max(float(e.max()) for _, e in envelope) or 1.0
    onsets, loud_until = [], -1.0
    for start, levels in envelope:
        above = numpy.nonzero(levels > peak * 0.25)[0]
        for index in above:
            t = start + index / 48000
            if t > loud_until + 0.3:
                onsets.append(t)
            loud_until = t
            break
        if len(above):
            loud_until = start + above[-1] / 48000
    return onsets


def lip_sync(checked: Checked) -> list[float]:
    """For each flash, how far the nearest beep is from it (positive: sound is late)."""
    # A file may start in the middle of a flash or a beep: that is no onset.
    video_start, audio_start = checked.spans["video"][0], checked.spans["audio"][0]
    flashes = [f for f in checked.flashes if f - video_start > FLASH_LENGTH * 1.5]
    beeps = [b for b in checked.beeps if b - audio_start > FLASH_LENGTH * 1.5]
    offsets = []
    for flash in flashes:
        near = [b - flash for b in beeps if abs(b - flash) < 0.4]
        if near:
            offsets.append(min(near, key=abs))
    return offsets


def ffprobe_frames(path: Path) -> dict:
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"ffprobe failed on {path}: {result.stderr}"
    streams = json.loads(result.stdout)["streams"]
    return {s["codec_type"]: int(s.get("nb_read_frames", 0)) for s in streams}


def ffmpeg_errors(path: Path) -> str:
    """What a full decode by Debian's ffmpeg says at -v error, plus any DTS going back.

    `-enc_time_base -1` keeps each stream's own time base on the way out. Without it
    the ffmpeg CLI rescales a 30 fps stream's millisecond timestamps to 1/30 s for its
    null output, and two frames 33 ms apart (say at 50 and 83 ms) can round to the
    same tick there: it then reports "non monotonically increasing dts to muxer" about
    its own output, for a file whose timestamps strictly increase. What the file holds
    is checked directly instead, packet by packet.
    """
    result = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-enc_time_base",
            "-1",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = (result.stderr + ("" if result.returncode == 0 else " (failed)")).strip()
    return "\n".join(filter(None, [said, dts_going_back(path)]))


def dts_going_back(path: Path) -> str:
    """Each stream's packets, in file order, must have strictly increasing DTS."""
    last: dict[int, int] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.dts is None:
                continue
            index = packet.stream.index
            if index in last and packet.dts <= last[index]:
                return f"stream {index}: dts {packet.dts} after {last[index]}"
            last[index] = packet.dts
    return ""


def assert_plays(
    checked: Checked, kinds=("audio", "video"), seconds=None, audio_hole=0.1
) -> None:
    """The checks every recording test makes: frames counted twice, clean decode.

    `audio_hole` is the longest hole allowed between audio frames (a show in which
    the performer paused has one of about the pause).
    """
    for kind in kinds:
        assert checked.counts.get(kind, 0) > 0, f"no {kind} frames decoded: {checked}"
        assert checked.probed.get(kind, 0) > 0, f"ffprobe counts no {kind}: {checked}"
        # The two decoders may differ by a frame or two at a torn end, never more.
        difference = abs(checked.probed[kind] - checked.counts[kind])
        assert difference <= 3, f"PyAV and ffprobe disagree on {kind}: {checked}"
    assert checked.errors == "", f"ffmpeg decode reported: {checked.errors}"
    if seconds is not None:
        assert checked.duration is not None, "the file states no duration"
        assert abs(checked.duration - seconds) <= 2.0, (
            f"file lasts {checked.duration:.2f} s, the show {seconds:.2f} s"
        )
    if "audio" in kinds:
        assert checked.audio_gap < audio_hole, (
            f"audio has a hole: {checked.audio_gap:.3f} s"
        )
