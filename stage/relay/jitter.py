"""Frame assembly for a publisher's receiver that lets a frame go the moment it is whole.

aiortc's jitter buffer is written for a decoder: it calls a video frame complete only
when the first packet of the *next* frame arrives (its timestamp differs), and holds
four audio frames back before letting the first one go. A relay pays that as latency
on every frame: one frame interval (33 ms at 30 fps) for video, 80 ms for audio. These
buffers stand in the receiver's place (RELAY-NOTES.md) and release

- a video frame when its packets run unbroken up to the one with the marker bit (RFC
  3550: the last packet of a picture; VP8 and H.264 packetizers all set it), or, when
  that packet is lost for good, when a packet of a later frame shows the frame ended;
- an audio packet as soon as it arrives in order: each Opus packet is a frame. A hole
  is waited for while at most AUDIO_REORDER_WAIT later packets have arrived, then
  skipped (audio is not retransmitted; the decoder conceals the gap).

A retransmission that comes so late that later frames have already left (100 or more
packets behind, which aiortc takes for a sender counting afresh and resets on) is
dropped instead: forwarding it would send viewers an old picture and the recorder a
step back in time, and the reset would leave a hole that stalls the picture.

Several frames can become whole at once (a retransmission fills a hole with frames
complete behind it); `add` returns the first, as aiortc's receiver expects, and
`take_ready` gives the rest.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

VIDEO_CAPACITY = 512  # packets; aiortc's own size, which the stall watchdog reads
# A packet behind the last frame released, in sequence and by less than this in time,
# is a late retransmission. A sender that really counts afresh lands in this window
# with odds of 1 in 5,000, and is believed after STALE_LIMIT such packets anyway.
STALE_TICKS = 90000 * 10
STALE_LIMIT = 64
AUDIO_REORDER_WAIT = 2  # packets (40 ms of Opus) that may overtake a missing one
AUDIO_RESTART_BEHIND = 100  # a packet this far behind means a new count, as in aiortc


class VideoFrameBuffer(JitterBuffer):
    """aiortc's video buffer (origin, reordering, overflow and PLI rules kept) with
    frames released on their marker bit."""

    def __init__(self) -> None:
        super().__init__(capacity=VIDEO_CAPACITY, is_video=True)
        self._last: tuple[int, int] | None = None  # (last sequence, timestamp) released
        self._stale_run = 0

    def add(self, packet) -> tuple[bool, JitterFrame | None]:
        if self._stale(packet):
            return False, None
        return super().add(packet)

    def _stale(self, packet) -> bool:
        if self._last is None:
            return False
        sequence, timestamp = self._last
        behind = (sequence - packet.sequence_number) & 0xFFFF
        earlier = (timestamp - packet.timestamp) & 0xFFFFFFFF
        if 0 < behind < 0x8000 and earlier < STALE_TICKS and self._stale_run < STALE_LIMIT:
            self._stale_run += 1
            return True
        self._stale_run = 0
        return False

    def take_ready(self) -> JitterFrame | None:
        """The next whole frame already held, if any."""
        if self._origin is None:
            return None
        return self._remove_frame(self._origin)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        origin, capacity, slots = self._origin, self._capacity, self._packets
        timestamp = None
        payloads: list[bytes] = []
        for count in range(capacity):
            packet = slots[(origin + count) % capacity]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # The marker packet of this frame never came; a later frame has begun.
                return self._release(payloads, timestamp, count)
            payloads.append(packet._data)
            if packet.marker:
                return self._release(payloads, timestamp, count + 1)
        return None

    def _release(self, payloads: list[bytes], timestamp: int, count: int) -> JitterFrame:
        self._last = ((self._origin + count - 1) & 0xFFFF, timestamp)
        self.remove(count)
        return JitterFrame(data=b"".join(payloads), timestamp=timestamp)


class AudioFrameBuffer:
    """Releases audio packets in sequence order, without holding any back to prefetch."""

    def __init__(self) -> None:
        self._next: int | None = None  # sequence number of the next packet to release
        self._waiting: dict[int, object] = {}  # packets that arrived ahead of a hole
        self._ready: list[JitterFrame] = []

    def add(self, packet) -> tuple[bool, JitterFrame | None]:
        sequence = packet.sequence_number
        if self._next is None:
            self._next = sequence
        ahead = (sequence - self._next) & 0xFFFF
        if ahead >= 0x8000:
            if 0x10000 - ahead < AUDIO_RESTART_BEHIND:
                return False, None  # late (its turn was skipped) or a duplicate
            # Far behind: the sender started counting afresh.
            self._waiting.clear()
            self._next, ahead = sequence, 0
        self._waiting[sequence] = packet
        if ahead > AUDIO_REORDER_WAIT:
            # A hole has waited long enough: resume at the oldest packet held.
            self._next = min(self._waiting, key=lambda held: (held - self._next) & 0xFFFF)
        while self._next in self._waiting:
            released = self._waiting.pop(self._next)
            self._ready.append(JitterFrame(data=released._data, timestamp=released.timestamp))
            self._next = (self._next + 1) & 0xFFFF
        return False, self.take_ready()

    def take_ready(self) -> JitterFrame | None:
        return self._ready.pop(0) if self._ready else None
