"""Recording files: where they live, and the remux that gives them duration and cues.

While a performance runs, frames go to `<start>.live.<ext>`, a Matroska file written in
live mode and flushed at least once a second (clusters of at most 1 s), so a killed
server loses about a second. Live mode writes no duration and no cues; when the file is
closed (or found after a crash) one remux pass copies the packets into `<start>.<ext>`,
which has both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av

logger = logging.getLogger(__name__)

LIVE_SUFFIX = ".live"


def container_for(video_codec: str | None) -> tuple[str, str]:
    """(PyAV format, file extension): WebM holds VP8 and Opus; H.264 needs Matroska."""
    if video_codec == "H264":
        return "matroska", ".mkv"
    return "webm", ".webm"


def recording_paths(
    folder: Path, started_at: datetime, extension: str
) -> tuple[Path, Path]:
    stamp = started_at.strftime("%Y-%m-%dT%H-%M-%S.%fZ")
    return folder / f"{stamp}{LIVE_SUFFIX}{extension}", folder / f"{stamp}{extension}"


def live_path_for(final: Path) -> Path:
    return final.with_name(final.stem + LIVE_SUFFIX + final.suffix)


def final_path_for(live: Path) -> Path:
    return live.with_name(live.name.replace(LIVE_SUFFIX, "", 1))


@dataclass(frozen=True)
class Finished:
    path: Path | None  # None when nothing playable was written
    duration: float
    size: int
    frames: dict[str, int]


def finish(live: Path) -> Finished:
    """Remux a live file into its final name; drop it if it holds no frame at all.

    Demuxing stops at the first damaged packet, which after a crash is the torn end
    of the file; everything before it is kept.
    """
    final = final_path_for(live)
    frames = {"audio": 0, "video": 0}
    first = last = None
    if not live.is_file():
        return Finished(None, 0.0, 0, frames)
    try:
        source = av.open(str(live))
    except (av.FFmpegError, OSError) as exc:
        logger.warning("recording %s: unreadable, dropped (%s)", live.name, exc)
        _remove(live)
        return Finished(None, 0.0, 0, frames)

    try:
        kinds = [s for s in source.streams if s.type in ("audio", "video")]
        if not kinds:
            raise EOFError("no audio or video stream")
        format_name = "matroska" if final.suffix == ".mkv" else "webm"
        with av.open(str(final), "w", format=format_name) as target:
            streams = {s.index: target.add_stream_from_template(s) for s in kinds}
            try:
                for packet in source.demux(kinds):
                    if packet.dts is None or packet.size == 0:
                        continue
                    frames[packet.stream.type] += 1
                    seconds = float(packet.pts * packet.time_base)
                    first = seconds if first is None else min(first, seconds)
                    last = seconds if last is None else max(last, seconds)
                    packet.stream = streams[packet.stream.index]
                    target.mux(packet)
            except (av.FFmpegError, EOFError) as exc:
                logger.info(
                    "recording %s: torn end after %s frames (%s)",
                    live.name,
                    frames,
                    exc,
                )
    except (OSError, av.FFmpegError, EOFError) as exc:
        # No room (or no sense) for a second copy: the live file is still playable
        # from start to end, it only lacks duration and cues.
        logger.warning(
            "recording %s: remux failed, keeping the live file (%s)", live.name, exc
        )
        _remove(final)
        if not any(frames.values()):
            _remove(live)
            return Finished(None, 0.0, 0, frames)
        live.rename(final)
        duration = (last - first) if first is not None else 0.0
        return Finished(final, duration, final.stat().st_size, frames)
    finally:
        source.close()

    if not any(frames.values()):
        _remove(final)
        _remove(live)
        return Finished(None, 0.0, 0, frames)
    _remove(live)
    duration = (last - first) if first is not None else 0.0
    return Finished(final, duration, final.stat().st_size, frames)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("recording %s: could not remove (%s)", path.name, exc)
