"""Clip export time: a 1-minute clip as MP4 (H.264 + AAC) and as recorded (WebM).

    .venv/bin/python -m bench.clips [--seconds 60]

A recording shaped like the recorder's (WebM, VP8 640x480 at 30 fps with a keyframe
only at the start as browsers send them, Opus 48 kHz stereo) is made first from the
real footage and music of tests/media.py; then the clip is cut from 5 s in, timed on
the wall clock and in CPU time of this thread (exports run on one worker thread).
"""

from __future__ import annotations

import argparse
import fractions
import tempfile
import time
from pathlib import Path

import av

from stage.recorder import clips
from tests.media import ensure_media

MS = fractions.Fraction(1, 1000)


def make_recording(media, target: Path, seconds: float) -> None:
    with av.open(str(target), "w", format="webm") as output:
        video = output.add_stream("libvpx", rate=30)
        video.width, video.height, video.pix_fmt = 640, 480, "yuv420p"
        video.bit_rate = 1_200_000
        video.options = {"deadline": "realtime", "cpu-used": "8", "g": "100000"}
        audio = output.add_stream("libopus", rate=48000, layout="stereo")
        frames = int(seconds * 30)
        written = 0
        while written < frames:
            with av.open(str(media.camera)) as camera:
                for frame in camera.decode(video=0):
                    if written >= frames:
                        break
                    frame.pts, frame.time_base = written * 1000 // 30, MS
                    video.codec_context.time_base = MS
                    for packet in video.encode(frame):
                        output.mux(packet)
                    written += 1
        for packet in video.encode(None):
            output.mux(packet)
        samples = 0
        resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=48000, frame_size=960
        )
        while samples < seconds * 48000:
            with av.open(str(media.music)) as music:
                for frame in music.decode(audio=0):
                    frame.pts = None
                    for out in resampler.resample(frame):
                        out.pts, out.time_base = samples, fractions.Fraction(1, 48000)
                        samples += out.samples
                        for packet in audio.encode(out):
                            output.mux(packet)
                    if samples >= seconds * 48000:
                        break
        for packet in audio.encode(None):
            output.mux(packet)


def timed(work):
    wall, cpu = time.monotonic(), time.thread_time()
    made = work()
    return made, time.monotonic() - wall, time.thread_time() - cpu


def main(seconds: float) -> None:
    media = ensure_media()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        recording = folder / "recording.webm"
        make_recording(media, recording, seconds + 10)
        start, end = 5.0, 5.0 + seconds
        for name, cut, target in (
            ("MP4 (H.264 + AAC)", clips.export_mp4, folder / "clip.mp4"),
            ("as recorded (WebM)", clips.cut_as_recorded, folder / "clip.webm"),
        ):
            made, wall, cpu = timed(lambda c=cut, t=target: c(recording, t, start, end))
            print(
                f"{name}: {made.duration:.1f} s clip in {wall:.1f} s wall,"
                f" {cpu:.1f} s CPU, {target.stat().st_size / 1e6:.1f} MB,"
                f" frames {made.frames}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    main(parser.parse_args().seconds)
