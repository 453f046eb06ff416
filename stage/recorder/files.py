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
    of the file; everything before it is kept. A stream that got no packet (a track
    the publisher offered but never sent) is left out, so that an audio-only show
    gives an audio-only file rather than one with an empty picture.
    """
    final = final_path_for(live)
    remuxed = _Remuxed()
    if not live.is_file():
        return Finished(None, 0.0, 0, remuxed.frames)
    try:
        remuxed = _remux(live, final, kinds=("audio", "video"))
        empty = [kind for kind in remuxed.streams if not remuxed.frames[kind]]
        if empty and any(remuxed.frames.values()):
            logger.info("recording %s: no %s sent, left out", live.name, empty)
            kept = tuple(kind for kind in remuxed.streams if kind not in empty)
            remuxed = _remux(live, final, kinds=kept)
    except _Unreadable as exc:
        logger.warning("recording %s: unreadable, dropped (%s)", live.name, exc)
        _remove(live)
        return Finished(None, 0.0, 0, remuxed.frames)
    except (OSError, av.FFmpegError, EOFError) as exc:
        # No room (or no sense) for a second copy: the live file is still playable
        # from start to end, it only lacks duration and cues.
        logger.warning(
            "recording %s: remux failed, keeping the live file (%s)", live.name, exc
        )
        _remove(final)
        remuxed = getattr(exc, "remuxed", remuxed)
        if not any(remuxed.frames.values()):
            _remove(live)
            return Finished(None, 0.0, 0, remuxed.frames)
        trim_torn_end(live)
        live.rename(final)
        return Finished(final, remuxed.duration, final.stat().st_size, remuxed.frames)

    if not any(remuxed.frames.values()):
        _remove(final)
        _remove(live)
        return Finished(None, 0.0, 0, remuxed.frames)
    _remove(live)
    return Finished(final, remuxed.duration, final.stat().st_size, remuxed.frames)


class _Unreadable(Exception):
    """The live file cannot be opened at all."""


class _Remuxed:
    """What one remux pass copied: packets per kind, the kinds it had, its span."""

    def __init__(self) -> None:
        self.frames = {"audio": 0, "video": 0}
        self.streams: list[str] = []
        self.first: float | None = None
        self.last: float | None = None

    @property
    def duration(self) -> float:
        return (self.last - self.first) if self.first is not None else 0.0

    def count(self, kind: str, seconds: float) -> None:
        self.frames[kind] += 1
        self.first = seconds if self.first is None else min(self.first, seconds)
        self.last = seconds if self.last is None else max(self.last, seconds)


def _remux(live: Path, final: Path, kinds: tuple[str, ...]) -> _Remuxed:
    """Copy the packets of the streams of `kinds` from `live` into `final`.

    A failure is raised with what was copied until then as its `remuxed`.
    """
    remuxed = _Remuxed()
    try:
        source = av.open(str(live))
    except (av.FFmpegError, OSError) as exc:
        raise _Unreadable(exc) from exc
    try:
        chosen = [s for s in source.streams if s.type in kinds]
        if not chosen:
            raise EOFError("no audio or video stream")
        remuxed.streams = [s.type for s in chosen]
        format_name = "matroska" if final.suffix == ".mkv" else "webm"
        with av.open(str(final), "w", format=format_name) as target:
            streams = {s.index: target.add_stream_from_template(s) for s in chosen}
            try:
                for packet in source.demux(chosen):
                    if packet.dts is None or packet.size == 0:
                        continue
                    remuxed.count(
                        packet.stream.type, float(packet.pts * packet.time_base)
                    )
                    packet.stream = streams[packet.stream.index]
                    target.mux(packet)
            except (av.FFmpegError, EOFError) as exc:
                logger.info(
                    "recording %s: torn end after %s frames (%s)",
                    live.name,
                    remuxed.frames,
                    exc,
                )
    except (OSError, av.FFmpegError, EOFError) as exc:
        exc.remuxed = remuxed
        raise
    finally:
        source.close()
    return remuxed


# Matroska element ids (RFC 9559) that the trim below needs.
SEGMENT = 0x18538067


def trim_torn_end(path: Path) -> None:
    """Cut a live file back to its last complete top-level element.

    A live file is a segment of unknown size holding clusters of known size, written
    whole (writer.py). A crash or a full disk can leave the last cluster half written;
    players then report a file that "ended prematurely". Without that tail the file
    ends where a segment of unknown size may end: anywhere between two clusters.
    """
    try:
        with open(path, "r+b") as file:
            data = file.read()
            keep = _complete_length(data)
            if keep is not None and keep < len(data):
                file.truncate(keep)
                logger.info(
                    "recording %s: torn tail of %d bytes cut",
                    path.name,
                    len(data) - keep,
                )
    except OSError as exc:
        logger.warning("recording %s: could not trim (%s)", path.name, exc)


def _complete_length(data: bytes) -> int | None:
    position = 0
    while position < len(data):
        element = _element(data, position)
        if element is None:
            return position
        element_id, body, size = element
        if element_id == SEGMENT and size is None:
            position = body
            continue  # walk the segment's children as if they were top level
        if size is None or body + size > len(data):
            return position
        position = body + size
    return position


def _element(data: bytes, position: int) -> tuple[int, int, int | None] | None:
    """(id, where its body starts, body size or None when unknown) or None if torn."""
    element_id, position = _vint(data, position, keep_marker=True)
    if element_id is None:
        return None
    size, body = _vint(data, position, keep_marker=False)
    if size is None:
        return None
    length = body - position
    unknown = size == (1 << (7 * length)) - 1
    return element_id, body, None if unknown else size


def _vint(data: bytes, position: int, keep_marker: bool) -> tuple[int | None, int]:
    # EBML variable-length integers: the count of leading zero bits gives the length.
    if position >= len(data) or data[position] == 0:
        return None, position
    first = data[position]
    length = 8 - first.bit_length() + 1
    if position + length > len(data):
        return None, position
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for byte in data[position + 1 : position + length]:
        value = (value << 8) | byte
    return value, position + length


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("recording %s: could not remove (%s)", path.name, exc)
