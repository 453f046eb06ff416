"""Cutting a clip out of a recording, and the poster images: pure PyAV, no HTTP.

Two outputs per clip:

* as recorded (WebM with VP8 and Opus, or Matroska for H.264): packets are copied, except
  the head of the picture. Browsers send a keyframe only when asked for one (a viewer
  joining, a lost packet), so the keyframe before the requested start can be minutes
  early. Cutting there would start the clip at the wrong moment; cutting at the start
  without a keyframe would start it on a broken picture. So the frames from the start up
  to the next keyframe are decoded (from the keyframe before) and encoded again, and from
  that keyframe on the packets are copied as they are. Audio is Opus in 20 ms packets
  that stand alone, so it is always copied.
* MP4 (H.264 + AAC) for social networks: everything decoded and encoded again.

Both start their timestamps at the requested moment, so audio stays where it was
relative to the picture. Each function reports progress as a fraction from 0 to 1.
"""

from __future__ import annotations

import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy

logger = logging.getLogger(__name__)

MILLISECONDS = fractions.Fraction(1, 1000)
SAMPLE_TIME = fractions.Fraction(1, 48000)
# Re-encoded heads should not look worse than the copied rest.
HEAD_BIT_RATE = 2_500_000
POSTER_SIZE = (640, 360)  # for a recording without a picture

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Made:
    path: Path
    duration: float  # seconds from the first to the end of the last frame written
    frames: dict[str, int]


def duration_of(path: Path) -> float:
    """Seconds a recording lasts: from its header, or from its packets if it has none."""
    with av.open(str(path)) as container:
        if container.duration:
            return container.duration / 1e6
        last = 0.0
        for packet in container.demux():
            if packet.pts is not None:
                last = max(last, float(packet.pts * packet.time_base))
        return last


def _streams(container):
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    return video, audio


def _seek_before(container, video, start: float) -> None:
    """Put the demuxer on the video keyframe at or before `start` (or the beginning)."""
    if start <= 0:
        return
    stream = video or container.streams[0]
    try:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
    except av.FFmpegError:
        container.seek(0)


def _seconds(packet_or_frame) -> float:
    return float(packet_or_frame.pts * packet_or_frame.time_base)


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


class _Reporter:
    """Calls `progress` with the share of the clip done, a few times a second of media."""

    def __init__(self, progress: Progress | None, start: float, end: float) -> None:
        self.progress, self.start, self.length = progress, start, end - start
        self.last = -1.0

    def at(self, t: float) -> None:
        if self.progress is None:
            return
        share = min(max((t - self.start) / self.length, 0.0), 1.0)
        if share - self.last >= 0.02:
            self.last = share
            self.progress(share)


# as recorded


def cut_as_recorded(
    source: Path,
    target: Path,
    start: float,
    end: float,
    progress: Progress | None = None,
) -> Made:
    frames = {"audio": 0, "video": 0}
    reporter = _Reporter(progress, start, end)
    last_end = 0.0
    format_name = "matroska" if target.suffix == ".mkv" else "webm"
    with (
        av.open(str(source)) as container,
        av.open(str(target), "w", format=format_name) as output,
    ):
        video, audio = _streams(container)
        out_audio = output.add_stream_from_template(audio) if audio else None
        if out_audio is not None:
            out_audio.time_base = MILLISECONDS
        head = _Head(output, video) if video else None
        copying = False  # video: past the first keyframe at or after start
        _seek_before(container, video, start)

        for packet in container.demux(*(s for s in (video, audio) if s)):
            if packet.pts is None or packet.size == 0:
                continue
            t = _seconds(packet)
            if packet.stream is audio:
                if start <= t < end:
                    packet.stream = out_audio
                    packet.pts = packet.dts = _ms(t - start)
                    packet.time_base = MILLISECONDS
                    output.mux(packet)
                    frames["audio"] += 1
                    last_end = max(last_end, t - start + 0.02)
                reporter.at(t)
                continue
            if t >= end:
                continue
            if not copying and packet.is_keyframe and t >= start:
                copying = True
                frames["video"] += head.finish()
            if copying:
                packet.stream = head.stream
                packet.pts = packet.dts = _ms(t - start)
                packet.time_base = MILLISECONDS
                output.mux(packet)
                frames["video"] += 1
            else:
                frames["video"] += head.feed(packet, start)
            last_end = max(last_end, t - start)
            reporter.at(t)
        if head is not None and not copying:
            frames["video"] += head.finish()
    if progress:
        progress(1.0)
    return Made(target, last_end, frames)


class _Head:
    """Decodes from the keyframe before the cut and encodes the frames from the cut on."""

    def __init__(self, output, video) -> None:
        self.video = video
        self.decoder = video.codec_context
        codec = {"vp8": "libvpx", "h264": "libx264"}.get(video.codec_context.name)
        if codec is None:
            raise ValueError(f"cannot cut {video.codec_context.name} video")
        self.stream = output.add_stream(codec, rate=30)
        self.stream.width = video.codec_context.width
        self.stream.height = video.codec_context.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = MILLISECONDS
        self.stream.codec_context.time_base = MILLISECONDS
        self.stream.bit_rate = HEAD_BIT_RATE
        if codec == "libvpx":
            self.stream.options = {"deadline": "good", "cpu-used": "4"}
        else:
            self.stream.options = {"preset": "veryfast", "tune": "zerolatency"}
        self.output = output
        self.fed = False

    def feed(self, packet, start: float) -> int:
        written = 0
        for frame in self.decoder.decode(packet):
            t = _seconds(frame)
            if t < start:
                continue
            if (frame.width, frame.height) != (self.stream.width, self.stream.height):
                frame = frame.reformat(self.stream.width, self.stream.height)
            frame = frame.reformat(format="yuv420p")
            frame.pts = _ms(t - start)
            frame.time_base = MILLISECONDS
            for out in self.stream.encode(frame):
                self.output.mux(out)
            self.fed = True
            written += 1
        return written

    def finish(self) -> int:
        if not self.fed:
            return 0
        self.fed = False
        for out in self.stream.encode(None):
            self.output.mux(out)
        return 0


# MP4 for social networks


def export_mp4(
    source: Path,
    target: Path,
    start: float,
    end: float,
    progress: Progress | None = None,
) -> Made:
    frames = {"audio": 0, "video": 0}
    reporter = _Reporter(progress, start, end)
    last_end = 0.0
    with (
        av.open(str(source)) as container,
        av.open(
            str(target), "w", format="mp4", options={"movflags": "+faststart"}
        ) as output,
    ):
        video, audio = _streams(container)
        out_video = out_audio = None
        resampler = None
        samples = None
        if audio:
            out_audio = output.add_stream("aac", rate=48000, layout="stereo")
            out_audio.bit_rate = 160_000
            resampler = av.AudioResampler(
                format="fltp", layout="stereo", rate=48000, frame_size=1024
            )
        if video:
            out_video = output.add_stream("libx264", rate=30)
            # H.264 in 4:2:0 wants even dimensions.
            out_video.width = video.codec_context.width // 2 * 2
            out_video.height = video.codec_context.height // 2 * 2
            out_video.pix_fmt = "yuv420p"
            out_video.time_base = MILLISECONDS
            out_video.codec_context.time_base = MILLISECONDS
            # One thread: exports share the machine with the live relay.
            out_video.options = {"preset": "veryfast", "crf": "22", "threads": "1"}
        _seek_before(container, video, start)

        for frame in container.decode(*(s for s in (video, audio) if s)):
            if frame.pts is None:
                continue
            t = _seconds(frame)
            if isinstance(frame, av.VideoFrame):
                if not start <= t < end:
                    continue
                if (frame.width, frame.height) != (out_video.width, out_video.height):
                    frame = frame.reformat(out_video.width, out_video.height)
                frame = frame.reformat(format="yuv420p")
                frame.pts = _ms(t - start)
                frame.time_base = MILLISECONDS
                for packet in out_video.encode(frame):
                    output.mux(packet)
                frames["video"] += 1
                last_end = max(last_end, t - start)
            else:
                length = frame.samples / frame.sample_rate
                if t + length <= start or t >= end:
                    continue
                if samples is None:
                    # Audio is counted in samples from the first one kept.
                    samples = round(max(t - start, 0.0) * 48000)
                frame.pts = None
                for out in resampler.resample(frame):
                    out.pts, out.time_base = samples, SAMPLE_TIME
                    samples += out.samples
                    for packet in out_audio.encode(out):
                        output.mux(packet)
                frames["audio"] += 1
                last_end = max(last_end, t + length - start)
            reporter.at(t)

        if resampler is not None:
            for out in resampler.resample(None):
                out.pts, out.time_base = samples, SAMPLE_TIME
                samples += out.samples
                for packet in out_audio.encode(out):
                    output.mux(packet)
            for packet in out_audio.encode(None):
                output.mux(packet)
        if out_video is not None:
            for packet in out_video.encode(None):
                output.mux(packet)
    if progress:
        progress(1.0)
    return Made(target, last_end, frames)


# posters


def poster(source: Path, target: Path, at: float) -> Path:
    """A JPEG of the picture at `at` seconds (a plain card for audio-only files)."""
    picture = None
    with av.open(str(source)) as container:
        video, _ = _streams(container)
        if video is not None:
            _seek_before(container, video, at)
            for frame in container.decode(video):
                picture = frame
                if frame.pts is not None and _seconds(frame) >= at:
                    break
    if picture is None:
        width, height = POSTER_SIZE
        card = numpy.full((height, width, 3), (28, 24, 40), numpy.uint8)
        picture = av.VideoFrame.from_ndarray(card, format="rgb24")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width = picture.width // 2 * 2
    encoder.height = picture.height // 2 * 2
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 25)
    image = picture.reformat(encoder.width, encoder.height, format="yuvj420p")
    data = b"".join(bytes(p) for p in encoder.encode(image) + encoder.encode(None))
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target
