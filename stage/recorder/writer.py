"""The muxing thread: writes packets with PyAV off the event loop.

Disk writes can stall (a slow or full disk), and the relay must never wait for them, so
each recording has its own thread. The event loop only appends packets to a deque;
the thread wakes a few times a second and writes what has gathered. (Waking it for
every packet cost the event loop a thread switch 80 times a second per stage, each a
chance for the scheduler to hand the core away mid-fan-out.) Anything the thread
hits is reported back once, and the thread then stops taking packets.
"""

from __future__ import annotations

import collections
import fractions
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import av

logger = logging.getLogger(__name__)

MILLISECONDS = fractions.Fraction(1, 1000)

# Matroska in live mode, a cluster at least every second, every packet flushed:
# after a kill, the file plays up to about a second before it (RELAY-NOTES.md).
LIVE_OPTIONS = {"live": "1", "cluster_time_limit": "1000"}
CONTAINER_OPTIONS = {"flush_packets": "1"}

# How often the thread writes what has gathered: a kill loses at most this much more
# than the cluster in progress.
WRITE_INTERVAL = 0.05


class Writer:
    def __init__(
        self,
        path: Path,
        format_name: str,
        video: tuple[str, int, int] | None,
        audio: bool,
        on_error: Callable[[str], None],
    ) -> None:
        self.path = path
        self.packets = {"audio": 0, "video": 0}
        self._format = format_name
        self._video = video
        self._audio = audio
        self._on_error = on_error
        self._pending: collections.deque = collections.deque()
        self._finishing = threading.Event()
        self._failed = False
        self.failure: str | None = None  # what stopped it, said for a person
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.stem}")
        self._thread.start()

    def write(self, kind: str, data: bytes, pts_ms: int, keyframe: bool) -> None:
        self._pending.append((kind, data, pts_ms, keyframe))

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def finish(self) -> None:
        """Close the file; blocks until the thread is done (call it from an executor)."""
        self._finishing.set()
        self._thread.join()

    def _run(self) -> None:
        container = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # "x": created exclusively, never over an earlier recording.
            with open(self.path, "xb"):
                pass
            container = av.open(
                str(self.path),
                "w",
                format=self._format,
                options=LIVE_OPTIONS,
                container_options=CONTAINER_OPTIONS,
            )
            streams = self._add_streams(container)
            while True:
                finishing = self._finishing.wait(WRITE_INTERVAL)
                while self._pending:
                    self._mux(container, streams, self._pending.popleft())
                if finishing:
                    break
        except Exception as exc:  # disk full, folder gone, muxer refusal: all alike
            self._fail(exc)
            self._drain()
        finally:
            if container is not None:
                try:
                    container.close()
                except Exception as exc:
                    self._fail(exc)

    def _mux(self, container, streams: dict, item: tuple) -> None:
        kind, data, pts_ms, keyframe = item
        packet = av.Packet(data)
        packet.stream = streams[kind]
        packet.pts = packet.dts = pts_ms
        packet.time_base = MILLISECONDS
        packet.is_keyframe = keyframe
        container.mux(packet)
        self.packets[kind] += 1

    def _add_streams(self, container) -> dict:
        streams = {}
        if self._video:
            codec, width, height = self._video
            name = {"VP8": "vp8", "H264": "h264"}[codec]
            streams["video"] = container.add_mux_stream(
                name, width=width, height=height
            )
            streams["video"].time_base = MILLISECONDS
        if self._audio:
            # A mux-only Opus stream gets no OpusHead and 0 channels; an encoder stream
            # that is never fed writes a correct header (RELAY-NOTES.md).
            streams["audio"] = container.add_stream(
                "libopus", rate=48000, layout="stereo"
            )
            streams["audio"].time_base = MILLISECONDS
        return streams

    def _fail(self, exc: Exception) -> None:
        if self._failed:
            return
        self._failed = True
        reason = describe_failure(exc)
        self.failure = reason
        logger.warning("recording %s failed: %s (%r)", self.path.name, reason, exc)
        self._on_error(reason)

    def _drain(self) -> None:
        # Failed: take packets and drop them until the recording is finished.
        while not self._finishing.wait(WRITE_INTERVAL):
            self._pending.clear()
        self._pending.clear()


def describe_failure(exc: Exception) -> str:
    # Said to the performer: no paths, no internals (those go to the log above).
    errno = getattr(exc, "errno", None)
    if errno in (28, 122):  # ENOSPC, EDQUOT
        return "the recording disk is full"
    if errno in (1, 2, 13, 17, 20, 30):  # EPERM ENOENT EACCES EEXIST ENOTDIR EROFS
        return "the recording folder cannot be written"
    return "the recording could not be written"
