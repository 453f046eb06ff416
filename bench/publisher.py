"""The benchmark's one publisher: 640x480 VP8 at 30 fps of moving grain, about 1 Mb/s, and Opus.

The same aiortc peer publishes to each server: over WHIP to Stage and to the
MediaRelay reference, into a VideoRoom over Janus's HTTP API. The video is encoded
once, ahead of time (a 20 s loop at a constant 1 Mb/s, cached under bench/results/),
and played as packets: the sender packetizes and encrypts but does not encode, which
keeps the publisher cheap on a busy machine and sends every server the same stream
whatever bitrate estimate (REMB) it sends back. Audio is a live Opus tone. The
outgoing video packets are noted for the latency figures (`bench/latency.py`).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from pathlib import Path

import av
import numpy
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from tests.peers import VIDEO_RATE, Publisher, ToneTrack

from .janus import ROOM, JanusSession
from .latency import SendLog, watch_publisher

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

BITRATE = 1_000_000
FPS = 30
WIDTH, HEIGHT = 640, 480
LOOP_SECONDS = 20
KEYFRAME_EVERY = 60  # frames
KEYFRAME_GAP = 0.5  # seconds at least between keyframes sent on request
LOOP_FILE = ROOT / "bench" / "results" / "publisher-loop-v1.ivf"


def busy_pictures(width: int, height: int):
    """Pictures that cost bits like a camera's: grain that drifts sideways, with a band
    of fresh grain every frame, so the encoder runs at its target bitrate rather than
    coasting on a flat picture."""
    random = numpy.random.default_rng(1)
    still = random.integers(0, 255, (height, width, 3), numpy.uint8)
    count = 0
    while True:
        image = numpy.roll(still, 4 * count, axis=1)
        band = (count * 4) % height
        image[band : band + 4] = random.integers(
            0, 255, (min(4, height - band), width, 3), numpy.uint8
        )
        yield image
        count += 1


def encode_loop(target: Path) -> None:
    """Encode LOOP_SECONDS of busy pictures as aiortc's realtime VP8 settings would, at
    BITRATE (constant), with a keyframe every KEYFRAME_EVERY frames."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with av.open(str(partial), "w", format="ivf") as output:
        stream = output.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = BITRATE
        stream.gop_size = KEYFRAME_EVERY
        stream.options = {
            "deadline": "realtime",
            "cpu-used": "-6",
            "lag-in-frames": "0",
            "minrate": str(BITRATE),
            "maxrate": str(BITRATE),
            "bufsize": str(BITRATE),
            "keyint_min": str(KEYFRAME_EVERY),
            "static-thresh": "1",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
        pictures = busy_pictures(WIDTH, HEIGHT)
        for n in range(LOOP_SECONDS * FPS):
            frame = av.VideoFrame.from_ndarray(next(pictures), format="rgb24")
            frame.pts = n
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    partial.rename(target)


def load_loop() -> list[tuple[bytes, bool]]:
    """The encoded loop, (VP8 frame, is keyframe) per frame; encoded once and kept."""
    if not LOOP_FILE.exists():
        logger.warning("encoding the publisher's %d s loop once", LOOP_SECONDS)
        encode_loop(LOOP_FILE)
    with av.open(str(LOOP_FILE)) as container:
        return [(bytes(p), p.is_keyframe) for p in container.demux(video=0) if p.size]


class LoopTrack(MediaStreamTrack):
    """Plays the encoded loop in real time as packets, so the sender only packetizes.

    A keyframe request from the server (PLI or FIR) makes the loop jump ahead to its
    next keyframe, as an encoder would make one, but at most one keyframe every
    KEYFRAME_GAP seconds (a later request waits): on a saturated machine every lost
    packet brings a request, and a keyframe for each would multiply the bitrate.
    Timestamps keep running across the jumps and the loop's end."""

    kind = "video"

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        super().__init__()
        self.frames = frames
        self.sender = None  # set once the track has its sender
        self.sent = 0
        self.keyframes = 0
        self._last_keyframe = float("-inf")
        self._position = 0
        self._start: float | None = None

    def _keyframe_due(self, now: float) -> bool:
        if self.sender is None or not self.sender._RTCRtpSender__force_keyframe:
            return False
        if now - self._last_keyframe < KEYFRAME_GAP:
            return False
        self.sender._RTCRtpSender__force_keyframe = False
        return True

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / FPS
        await asyncio.sleep(max(0, due - time.monotonic()))
        now = time.monotonic()
        if self._keyframe_due(now):
            while not self.frames[self._position % len(self.frames)][1]:
                self._position += 1
        data, keyframe = self.frames[self._position % len(self.frames)]
        if keyframe:
            self.keyframes += 1
            self._last_keyframe = now
        packet = av.Packet(data)
        packet.pts = self.sent * (VIDEO_RATE // FPS)
        packet.time_base = fractions.Fraction(1, VIDEO_RATE)
        self.sent += 1
        self._position += 1
        return packet


class Published:
    """A publisher connected to a server: its peer connection, its video, and how to
    unpublish. The figures stay readable after the connection failed or closed."""

    def __init__(self, pc: RTCPeerConnection, frames) -> None:
        self.pc = pc
        pc.addTransceiver(ToneTrack(), direction="sendonly")
        self.video = LoopTrack(frames)
        self.sender = pc.addTransceiver(self.video, direction="sendonly").sender
        self.video.sender = self.sender
        self.stop = pc.close

    def sent(self) -> tuple[int, int, int]:
        """(frames, keyframes, payload bytes) of video sent so far."""
        octets = self.sender._RTCRtpSender__octet_count
        return self.video.sent, self.video.keyframes, octets

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"


async def publish_whip(base: str, stage: dict, frames, log: SendLog) -> Published:
    """Publish over WHIP."""
    publisher = Publisher(base, stage["id"], stage["key"])
    published = Published(publisher.pc, frames)
    await publisher.start(audio=False, video=False)
    watch_publisher(publisher.pc, log)

    async def stop() -> None:
        try:
            await publisher.stop()
        except AssertionError as status:  # the server ended the performance itself
            logger.warning("publisher: DELETE answered %s", status)
            await publisher.pc.close()

    published.stop = stop
    return published


async def publish_janus(url: str, frames, log: SendLog) -> tuple[Published, int]:
    """Join the VideoRoom as its publisher; returns the publisher and its id in the
    room (the feed viewers subscribe to)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    published = Published(pc, frames)
    await pc.setLocalDescription(await pc.createOffer())
    session = await JanusSession(url).create()

    async def stop() -> None:
        await session.destroy()
        await pc.close()

    published.stop = stop
    try:
        handle = await session.attach()
        joined = await session.message(
            handle,
            {"request": "joinandconfigure", "room": ROOM, "ptype": "publisher"},
            {"type": "offer", "sdp": pc.localDescription.sdp, "trickle": False},
        )
        answer = RTCSessionDescription(joined["jsep"]["sdp"], "answer")
        await pc.setRemoteDescription(answer)
        for _ in range(400):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"publisher's peer connection is {pc.connectionState}")
    except BaseException:
        await stop()
        raise
    watch_publisher(pc, log)
    return published, joined["id"]
