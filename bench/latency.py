"""Server-added latency: the same VP8 frame seen leaving the publisher and reaching a viewer.

The publisher and the viewers run on one machine, so `time.monotonic_ns()` is one
clock for all of them. The publisher notes, for the last RTP packet of each video
frame (marker bit), a key and the time just before SRTP protects it; a viewer notes
the key and the time just after SRTP unprotects the last packet of a frame and aiortc
has parsed and routed it. The key is the last 16 bytes of the frame, which is the end
of that packet's VP8 data after the payload descriptor (RFC 7741 §4.2: the descriptor
is the sender's own and may be rewritten). An SFU that forwards the VP8 frame as it
came (Janus byte for byte; Stage after cutting it into packets of its own size)
delivers the same bytes, so the two times can be paired. A server that re-encodes
(MediaRelay) delivers other bytes, and nothing pairs.

Only the last packet of each frame is paired because a server may cut a frame at
other places than the publisher did (Stage does), so other packets need not have a
counterpart; the last one's arrival is when the viewer has the whole frame. A frame
whose last packet holds fewer than 16 bytes of VP8 data is left out.

What is paired is an upper bound of what the server adds: it also holds SRTP on both
ends, two trips through the loopback and the two aiortc processes' scheduling.
"""

from __future__ import annotations

import collections
import time

import numpy

TAIL = 16
# The same key sent again after this long is the publisher's loop coming round, not a
# retransmission.
REPEAT_NS = 3_000_000_000


def vp8_key(payload: bytes) -> bytes | None:
    """The last TAIL bytes of a VP8 RTP payload's data (descriptor skipped), or None."""
    if not payload:
        return None
    offset = 1
    if payload[0] & 0x80:  # X: an extension byte follows
        if len(payload) < 2:
            return None
        extension = payload[1]
        offset = 2
        if extension & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= offset:
                return None
            offset += 2 if payload[offset] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            offset += 1
        if extension & 0x30:  # T or K: TID/Y/KEYIDX
            offset += 1
    if len(payload) - offset < TAIL:
        return None
    return payload[-TAIL:]


def rtp_payload(data: bytes) -> tuple[bool, int, bytes] | None:
    """(marker, SSRC, payload) of a serialized RTP packet, or None for RTCP."""
    if len(data) < 12 or 192 <= data[1] <= 208:
        return None
    count = data[0] & 0x0F
    offset = 12 + 4 * count
    if data[0] & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data)
    if data[0] & 0x20:  # padding
        end -= data[-1]
    if offset > end:
        return None
    return bool(data[1] & 0x80), int.from_bytes(data[8:12], "big"), data[offset:end]


class SendLog:
    """When each video frame's last packet left the publisher, by key; entries older
    than `keep` seconds go.

    A key can leave more than once in a window: the loop comes round every 20 s, and
    sooner when keyframe requests make the publisher skip ahead to the loop's next
    keyframe (Stage asks for one a second while it has viewers: the loop then came
    round in about 10 s, and a 16 s window paired arrivals with the next pass's
    departures, -10.3 s apart). So every departure is kept, and an arrival is paired
    with the latest one before it.
    """

    def __init__(self, keep: float = 60.0) -> None:
        self.keep_ns = int(keep * 1e9)
        self.sent: dict[bytes, list[int]] = {}
        self._order: collections.deque = collections.deque()

    def note(self, key: bytes) -> None:
        now = time.monotonic_ns()
        departures = self.sent.setdefault(key, [])
        if departures and now - departures[-1] < REPEAT_NS:
            return  # a retransmission: the first send counts
        departures.append(now)
        self._order.append((now, key))
        while self._order and self._order[0][0] < now - self.keep_ns:
            _, old = self._order.popleft()
            left = self.sent[old]
            left.pop(0)  # the oldest departure of that key is this one
            if not left:
                del self.sent[old]

    def since(self, moment_ns: int) -> dict[str, list[int]]:
        """Every key's departures from `moment_ns` on, oldest first."""
        found = {}
        for key, departures in self.sent.items():
            recent = [t for t in departures if t >= moment_ns]
            if recent:
                found[key.hex()] = recent
        return found


def watch_publisher(pc, log: SendLog) -> None:
    """Note the publisher's video frames' last packets in `log`, before SRTP."""
    video = next(s for s in pc.getSenders() if s.kind == "video")
    transport = video.transport
    original = transport._send_rtp
    ssrc = video._ssrc

    async def send_rtp(data: bytes) -> None:
        parsed = rtp_payload(data)
        if parsed is not None and parsed[0] and parsed[1] == ssrc:
            key = vp8_key(parsed[2])
            if key is not None:
                log.note(key)
        await original(data)

    transport._send_rtp = send_rtp


class ArrivalLog:
    """When each video frame's last packet reached a viewer, by key; while recording."""

    def __init__(self) -> None:
        self.arrived: dict[bytes, int] = {}
        self.recording = False

    def watch(self, receiver, payload_type: int) -> None:
        """Note the frames' last packets with `payload_type` that `receiver` gets."""
        original = receiver._handle_rtp_packet

        async def handle_rtp_packet(packet, arrival_time_ms: int) -> None:
            if self.recording and packet.marker and packet.payload_type == payload_type:
                self.note(packet.payload)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle_rtp_packet

    def note(self, payload: bytes) -> None:
        """A frame's last packet arrived now, with this (decrypted) VP8 payload."""
        now = time.monotonic_ns()
        key = vp8_key(payload)
        if key is not None and key not in self.arrived:
            self.arrived[key] = now

    def start(self) -> None:
        self.arrived.clear()
        self.recording = True

    def pair(self, sent: dict[str, list[int]]) -> tuple[list[int], int]:
        """Delays in µs of the frames found in `sent` (each arrival with the latest
        departure of its key before it), and how many arrived in all."""
        self.recording = False
        delays = []
        for key, arrival in self.arrived.items():
            before = [t for t in sent.get(key.hex(), ()) if t <= arrival]
            if before:
                delays.append((arrival - before[-1]) // 1000)
        arrived = len(self.arrived)
        self.arrived.clear()
        return delays, arrived


def percentiles(delays_us: list[int]) -> tuple[float | None, float | None]:
    """p50 and p99 in ms."""
    if not delays_us:
        return None, None
    p50, p99 = numpy.percentile(numpy.asarray(delays_us), [50, 99])
    return float(p50) / 1000, float(p99) / 1000
