"""Cutting a clip out of a recording, and the poster images: pure PyAV, no HTTP.

Two outputs per clip:

* as recorded (WebM with VP8 and Opus, or Matroska for H.264): packets are copied, except
  the head of the picture. Browsers send a keyframe only when asked for one (a viewer
  joining, a lost packet), so the keyframe before the requested start can be minutes
  early. Cutting there would start the clip at the wrong moment; cutting at the start
  without a keyframe would start it on a broken picture. So the frames from the start up
  to the next keyframe are decoded (from the keyframe before) and encoded again, and from
  that keyframe on the packets are copied as they are (H.264: see `_Head`). Audio is
  Opus in 20 ms packets that stand alone, so it is always copied.
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
# How far the MP4's sound may drift from its recorded time before silence is put in
# (or a frame left out): two Opus frames.
AUDIO_SLACK = 0.04
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
        out_video = output.add_stream_from_template(video) if video else None
        if out_video is not None:
            out_video.time_base = MILLISECONDS
        h264 = video is not None and video.codec_context.name == "h264"
        muxer = _Muxer(output, out_video, h264)
        head = _Head(muxer, video, out_video) if video else None
        annex_b = _annex_b_filter(video) if h264 else None
        copying = False  # video: past the first keyframe at or after start
        _seek_before(container, video, start)

        for packet in container.demux(*(s for s in (video, audio) if s)):
            if packet.pts is None or packet.size == 0:
                continue
            t = _seconds(packet)
            if packet.stream is audio:
                if start <= t < end:
                    _restamp(packet, out_audio, t - start)
                    muxer.mux(packet)
                    frames["audio"] += 1
                    last_end = max(last_end, t - start + 0.02)
                reporter.at(t)
                continue
            if t >= end:
                continue
            if not copying and packet.is_keyframe and t >= start:
                copying = True
                head.finish()
            if copying:
                for copied in annex_b.filter(packet) if annex_b else [packet]:
                    _restamp(copied, out_video, t - start)
                    muxer.mux(copied)
                    frames["video"] += 1
            else:
                frames["video"] += head.feed(packet, start)
            last_end = max(last_end, t - start)
            reporter.at(t)
        if head is not None and not copying:
            head.finish()
        muxer.close()
    if progress:
        progress(1.0)
    return Made(target, last_end, frames)


def _restamp(packet, stream, seconds: float) -> None:
    packet.stream = stream
    packet.pts = packet.dts = _ms(seconds)
    packet.time_base = MILLISECONDS


class _Muxer:
    """Muxes the clip's packets; for H.264 the header waits for the first picture.

    Matroska keeps an H.264 track's parameter sets (SPS and PPS) in its header as
    CodecPrivate, and players configure their decoder from it. They are those of the
    first picture written, so packets are held until that picture is known. Given
    them in Annex B form, FFmpeg's Matroska muxer writes CodecPrivate as avcC and
    turns every packet from start codes into length prefixes, as the format wants.
    """

    def __init__(self, output, video, h264: bool) -> None:
        self.output, self.video = output, video
        self.held: list | None = [] if h264 else None

    def mux(self, packet) -> None:
        if self.held is not None:
            if packet.stream.index != self.video.index:
                self.held.append(packet)
                return
            sets = _parameter_sets_in(bytes(packet))
            self.video.codec_context.extradata = b"".join(
                _START_CODE + nal for nal in sets
            )
            held, self.held = self.held, None
            self.output.mux(packet)
            for earlier in held:
                self.output.mux(earlier)
            return
        self.output.mux(packet)

    def close(self) -> None:
        # A clip without a single picture: write the sound anyway.
        held, self.held = self.held or [], None
        for packet in held:
            self.output.mux(packet)


# H.264 in Annex B form, with its parameter sets in band

_START_CODE = b"\x00\x00\x00\x01"
SPS, PPS = 7, 8


def _nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit, without their start codes."""
    units, position = [], data.find(b"\x00\x00\x01")
    while position != -1:
        begin = position + 3
        position = data.find(b"\x00\x00\x01", begin)
        unit = data[begin:] if position == -1 else data[begin:position]
        # A four-byte start code leaves its leading zero on the unit before.
        units.append(unit.rstrip(b"\x00") if position != -1 else unit)
    return [u for u in units if u]


def _parameter_sets_in(data: bytes) -> list[bytes]:
    return [u for u in _nal_units(data) if u[0] & 0x1F in (SPS, PPS)]


def _annex_b_filter(video):
    """A filter from the recording's H.264 packets to Annex B, or None if they are.

    FFmpeg's Matroska muxer stores what Stage records as avcC (CodecPrivate) and
    length-prefixed packets. Copied as they are beside a re-encoded head, those
    packets would be read with the head's parameter sets; the filter turns them into
    Annex B and puts the recording's SPS and PPS in band before every IDR picture
    that lacks them, so the copied run carries its own. A recording without avcC
    holds the packets as they came from the publisher, in Annex B already.
    """
    extradata = bytes(video.codec_context.extradata or b"")
    if not extradata or extradata.startswith((b"\x00\x00\x01", _START_CODE)):
        return None
    return av.BitStreamFilterContext("h264_mp4toannexb", video)


# libx264's names for the profiles FFmpeg's decoder reports
_X264_PROFILES = {
    "Baseline": "baseline",
    "Constrained Baseline": "baseline",
    "Main": "main",
    "High": "high",
}


class _Head:
    """Decodes from the keyframe before the cut and encodes the frames from the cut on.

    The encoded head and the copied rest are two coded video sequences in one track.
    For H.264 the head is encoded in the recording's profile (so the track's profile
    holds for all of it) with its parameter sets in band, before its first picture,
    as the copied keyframe has them before its own: each part is decoded with its own
    parameter sets whatever the container header says.
    """

    def __init__(self, muxer: _Muxer, video, stream) -> None:
        self.muxer, self.stream = muxer, stream
        self.decoder = video.codec_context
        self.codec = {"vp8": "libvpx", "h264": "libx264"}.get(self.decoder.name)
        if self.codec is None:
            raise ValueError(f"cannot cut {self.decoder.name} video")
        self.size = (self.decoder.width, self.decoder.height)
        self.encoder = None

    def _open(self):
        encoder = av.CodecContext.create(self.codec, "w")
        encoder.width, encoder.height = self.size
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = MILLISECONDS
        encoder.framerate = 30
        encoder.bit_rate = HEAD_BIT_RATE
        if self.codec == "libvpx":
            encoder.options = {"deadline": "good", "cpu-used": "4"}
        else:
            # No global header: libx264 then writes SPS and PPS in band.
            encoder.options = {
                "preset": "veryfast",
                "tune": "zerolatency",
                "profile": _X264_PROFILES.get(self.decoder.profile, "high"),
            }
        return encoder

    def feed(self, packet, start: float) -> int:
        written = 0
        for frame in self.decoder.decode(packet):
            t = _seconds(frame)
            if t < start:
                continue
            if self.encoder is None:
                self.encoder = self._open()
            if (frame.width, frame.height) != self.size:
                frame = frame.reformat(*self.size)
            frame = frame.reformat(format="yuv420p")
            frame.pts = _ms(t - start)
            frame.time_base = MILLISECONDS
            self._write(self.encoder.encode(frame))
            written += 1
        return written

    def finish(self) -> None:
        if self.encoder is not None:
            self._write(self.encoder.encode(None))
            self.encoder = None

    def _write(self, packets) -> None:
        for packet in packets:
            packet.stream = self.stream
            packet.time_base = MILLISECONDS
            packet.dts = packet.pts
            self.muxer.mux(packet)


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
        out_video = sound = None
        if audio:
            sound = _Sound(output)
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
                if sound.add(frame, t - start):
                    frames["audio"] += 1
                last_end = max(last_end, t + length - start)
            reporter.at(t)

        if sound is not None:
            sound.close()
        if out_video is not None:
            for packet in out_video.encode(None):
                output.mux(packet)
    if progress:
        progress(1.0)
    return Made(target, last_end, frames)


def _without_head(frame: av.AudioFrame, samples: int) -> av.AudioFrame | None:
    """The frame without its first `samples` samples; None if nothing is left."""
    if samples <= 0:
        return frame
    if samples >= frame.samples:
        return None
    array = frame.to_ndarray()
    # Planar formats have a row per channel; packed ones interleave the channels.
    step = 1 if frame.format.is_planar else len(frame.layout.channels)
    rest = av.AudioFrame.from_ndarray(
        array[:, samples * step :], format=frame.format.name, layout=frame.layout.name
    )
    rest.sample_rate = frame.sample_rate
    return rest


class _Sound:
    """The MP4's AAC track, on the recording's clock.

    The resampler cuts the sound into AAC's 1024-sample frames and only counts
    samples: a hole in the recording (a publisher that paused) would close up, and all
    the sound after it would play early by the hole's length. So each decoded frame's
    own time is compared with the samples given so far: a hole is filled with
    silence, and a frame that comes too early (a sender clock running slow) is left
    out, which keeps the sound within AUDIO_SLACK of the picture everywhere.
    """

    def __init__(self, output) -> None:
        self.output = output
        self.stream = output.add_stream("aac", rate=48000, layout="stereo")
        self.stream.bit_rate = 160_000
        self.resampler = av.AudioResampler(
            format="fltp", layout="stereo", rate=48000, frame_size=1024
        )
        self.given: int | None = None  # samples given, at 48 kHz from the clip start
        self.written = 0  # samples encoded: the next AAC frame's pts

    def add(self, frame: av.AudioFrame, at: float) -> bool:
        """Add a decoded frame that belongs `at` seconds into the clip."""
        wanted = round(at * 48000)
        if self.given is None:
            if wanted < 0:
                # The frame began before the start: its part before the start is cut
                # off. Kept whole from 0, it made all the sound late by that part, up
                # to a frame (20 ms of Opus), depending on where the cut fell.
                frame = _without_head(frame, round(-at * frame.sample_rate))
                if frame is None:
                    return False
                wanted = 0
            self.given = self.written = wanted
        late = wanted - self.given
        if late > AUDIO_SLACK * 48000:
            self._silence(late, frame)
        elif -late > AUDIO_SLACK * 48000:
            return False
        frame.pts = None
        self._resample(frame)
        return True

    def _silence(self, samples: int, like: av.AudioFrame) -> None:
        rate = like.sample_rate
        left = round(samples * rate / 48000)
        while left > 0:
            # A second at a time: a long pause must not become one huge frame.
            part = min(left, rate)
            silent = av.AudioFrame(
                format=like.format.name, layout=like.layout.name, samples=part
            )
            silent.sample_rate = rate
            for plane in silent.planes:
                plane.update(bytes(plane.buffer_size))
            self._resample(silent)
            left -= part

    def _resample(self, frame) -> None:
        self.given += round(frame.samples * 48000 / frame.sample_rate)
        self._encode(self.resampler.resample(frame))

    def _encode(self, frames) -> None:
        for out in frames:
            out.pts, out.time_base = self.written, SAMPLE_TIME
            self.written += out.samples
            for packet in self.stream.encode(out):
                self.output.mux(packet)

    def close(self) -> None:
        self._encode(self.resampler.resample(None))
        for packet in self.stream.encode(None):
            self.output.mux(packet)


# posters


def poster(source: Path, target: Path, at: float) -> Path:
    """A JPEG of the picture at `at` seconds (a plain card for audio-only files)."""
    picture = None
    with av.open(str(source)) as container:
        video, _ = _streams(container)
        if video is not None:
            _seek_before(container, video, at)
            for frame in _pictures(container, video):
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


def _pictures(container, video):
    """Decoded pictures, past any packet the decoder refuses (a poster needs one)."""
    for packet in container.demux(video):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            logger.debug(
                "%s: a packet at %s does not decode", container.name, packet.pts
            )
