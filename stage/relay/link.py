"""A link: one worker feeding a stage's encoded frames to another over a local socket.

With several workers (stage/front.py), a viewer on worker A may press Next onto a stage
live on worker B. Its connection stays with A (no renegotiation), so B sends the stage's
frames to A: B's hub gets one more consumer, a `LinkSender`, and A builds a mirror hub
fed by a `LinkedPublisher`, which offers the hub what a publisher does.

On the socket, B to A: a first JSON line describing the stage, then messages of one
type byte and a 4-byte length: `F` a frame (kind, keyframe, source, timestamp, size,
then the payload), `I` the stage's description again (JSON) when it changed (the
performer came back with a new connection). A to B: the byte `K` when A's viewers need
a keyframe. B's loop never waits for A: past SEND_LIMIT bytes queued on the socket, B
drops frames until the next keyframe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
from collections.abc import Callable

from .frames import MediaFrame
from .publisher import VideoDescribed

logger = logging.getLogger(__name__)

FRAME = struct.Struct(">BBBQHH")  # kind, keyframe, source, timestamp, width, height
HEADER = struct.Struct(">cI")  # message type, length of what follows
KINDS = ("audio", "video")
KEYFRAME = b"K"
# Bytes queued towards the other worker past which frames are dropped (about 2 s of
# a 4 Mb/s stage): the link is behind, and catching up means waiting for a keyframe.
SEND_LIMIT = 1 << 20


def describe(hub, performance_id: str | None) -> dict:
    """What a mirror needs to know of a stage besides its frames."""
    publisher = hub.publisher
    return {
        "stage": hub.stage_id,
        "name": hub.name,
        "tracks": {kind: track.codec for kind, track in publisher.tracks.items()},
        "h264_profile_level_id": publisher.h264_profile_level_id,
        "performance": performance_id,
    }


class LinkSender:
    """On the stage's worker: a hub consumer writing frames to the other worker."""

    def __init__(self, writer: asyncio.StreamWriter, want_keyframe: Callable) -> None:
        self.writer = writer
        self.want_keyframe = want_keyframe
        self._sources: dict[object, int] = {}
        self._dropping = False
        self.dropped = 0

    def send_description(self, description: dict) -> None:
        body = json.dumps(description).encode()
        self.writer.write(HEADER.pack(b"I", len(body)) + body)

    def push(self, frame: MediaFrame) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > SEND_LIMIT:
            if not self._dropping:
                logger.info("link: the other worker is behind, dropping to a keyframe")
                self._dropping = True
                self.want_keyframe()
        if self._dropping:
            if not (frame.kind == "video" and frame.keyframe):
                self.dropped += 1
                return
            if transport.get_write_buffer_size() > SEND_LIMIT:
                self.dropped += 1
                return
            self._dropping = False
        # A new source (the performer reconnected) must look new on the other side.
        source = self._sources.setdefault(frame.source, len(self._sources) % 256)
        width, height = frame.size or (0, 0)
        head = FRAME.pack(
            KINDS.index(frame.kind),
            frame.keyframe,
            source,
            frame.timestamp,
            width,
            height,
        )
        self.writer.write(HEADER.pack(b"F", len(head) + len(frame.data)))
        self.writer.write(head + frame.data)


class LinkedTrack:
    """One of the linked stage's tracks: what the hub and viewers ask of a track."""

    def __init__(self, kind: str, codec: str, profile_level_id: str | None) -> None:
        self.kind = kind
        self.codec = codec
        self.profile_level_id = profile_level_id


class LinkedPublisher(VideoDescribed):
    """On the viewer's worker: the stage on the other worker, as its mirror hub sees
    it. Frames arrive by `read`; keyframe requests go back over the link."""

    def __init__(self, description: dict, writer: asyncio.StreamWriter) -> None:
        self.id = "link-" + secrets.token_hex(4)
        self.stage_id = description["stage"]
        self.writer = writer
        self.tracks: dict[str, LinkedTrack] = {}
        self.performance_id: str | None = None
        self.deliver: Callable[[MediaFrame], None] | None = None
        self.want_keyframe: Callable[[], None] | None = None
        self.gone = asyncio.Event()
        self._sources: dict[int, object] = {}
        self.take(description)

    def take(self, description: dict) -> None:
        profile = description.get("h264_profile_level_id")
        self.tracks = {
            kind: LinkedTrack(kind, codec, profile if kind == "video" else None)
            for kind, codec in description["tracks"].items()
        }
        if description.get("performance") != self.performance_id:
            # Frames of a new performance come from a new source: re-anchor.
            self._sources = {}
        self.performance_id = description.get("performance")

    async def h264_described(self, timeout: float) -> None:
        """The stage's worker described its SPS profile before linking."""

    def request_keyframe(self) -> None:
        if not self.gone.is_set() and not self.writer.transport.is_closing():
            self.writer.write(KEYFRAME)

    async def read(
        self, reader: asyncio.StreamReader, on_description: Callable[[], None]
    ) -> None:
        """Hand every frame from the link to the hub, until the link closes."""
        try:
            while True:
                kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
                body = await reader.readexactly(length)
                if kind == b"I":
                    self.take(json.loads(body))
                    on_description()
                elif kind == b"F" and self.deliver is not None:
                    self.deliver(self._frame(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.gone.set()

    def _frame(self, body: bytes) -> MediaFrame:
        kind, keyframe, source, timestamp, width, height = FRAME.unpack_from(body)
        kind_name = KINDS[kind]
        return MediaFrame(
            kind_name,
            self.tracks[kind_name].codec,
            body[FRAME.size :],
            timestamp,
            self._sources.setdefault(source, object()),
            bool(keyframe),
            (width, height) if width else None,
        )

    async def close(self) -> None:
        self.gone.set()
        self.writer.close()
