"""Publishers whose clocks misbehave, the way real ones do.

Each one is a real aiortc publisher; only what its sender or its capture clock says
differs from a well-behaved one:

- `StaleFrameTrack`: one frame goes out stamped with an earlier capture time (an
  encoder or a network handing over an old frame late).
- `JumpingTrack`: from some moment on, capture times run ahead by a fixed amount (an
  encoder whose clock was stepped).
- `shift_rtp_clock`: from the next frame on, the sender's RTP timestamps are moved by
  a fixed amount, back as well as ahead (a sender whose clock was reset; aiortc's
  encoders refuse capture times that go back, so this is done to the packets).
- `Paused`: a track that sends nothing for a while, its clock running on meanwhile or
  standing still (an encoder that resumes where it stopped).
- `skew_sender_reports`: a sender's RTCP sender reports read a clock that is off by
  some seconds (tracks captured on unrelated clocks).
- `rtp_origin`: the sender's random RTP timestamp origin is chosen instead, e.g. just
  below 2^32 so that the timestamps wrap early in the show.
- `replay_old_packets`: a run of packets sent long ago reaches the server again as
  retransmissions (answers to NACKs that arrive late, as under a stalled event loop).
"""

from __future__ import annotations

import sys
import weakref

import av
from aiortc import MediaStreamTrack, rtcrtpsender
from aiortc.rtp import RtcpSrPacket

from tests.show import VIDEO_TIME_BASE, FlashTrack

WRAP = 1 << 32


class StaleFrameTrack(FlashTrack):
    """A flashing picture; one frame, `at` seconds in, is stamped `back` seconds early."""

    def __init__(self, clock, at: float, back: float, **kwargs) -> None:
        super().__init__(clock, **kwargs)
        self.at, self.back = at, back
        self.stale_sent = False

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        if not self.stale_sent and frame.pts * VIDEO_TIME_BASE >= self.at:
            frame.pts -= round(self.back / VIDEO_TIME_BASE)
            self.stale_sent = True
        return frame


class JumpingTrack(FlashTrack):
    """A flashing picture whose capture times jump ahead by `by` seconds, `at` s in."""

    def __init__(self, clock, at: float, by: float, **kwargs) -> None:
        super().__init__(clock, **kwargs)
        self.at, self.by = at, by

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        if frame.pts * VIDEO_TIME_BASE >= self.at:
            frame.pts += round(self.by / VIDEO_TIME_BASE)
        return frame


class Paused(MediaStreamTrack):
    """Another track, silent from `at` for `length` seconds of its capture clock.

    With `clock_stops`, capture times after the pause carry on from where they were
    when it began, as if no time had passed.
    """

    def __init__(self, track, at: float, length: float, clock_stops=False) -> None:
        super().__init__()
        self.kind = track.kind
        self.track, self.at, self.length = track, at, length
        self.clock_stops = clock_stops

    async def recv(self):
        while True:
            frame = await self.track.recv()
            t = float(frame.pts * frame.time_base)
            if not self.at <= t < self.at + self.length:
                break
        if self.clock_stops and t >= self.at:
            frame.pts -= round(self.length / frame.time_base)
        return frame

    def stop(self) -> None:
        super().stop()
        self.track.stop()


def skew_sender_reports(sender, seconds: float) -> None:
    """Make `sender`'s RTCP sender reports read a wall clock `seconds` off."""
    send = sender._send_rtcp

    async def skewed(packets) -> None:
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                packet.sender_info.ntp_timestamp = ntp + round(seconds * (1 << 32))
        await send(packets)

    sender._send_rtcp = skewed


def shift_rtp_clock(sender, ticks: int) -> None:
    """Move every RTP timestamp `sender` sends from its next frame on by `ticks`."""
    transport = sender.transport
    send = transport._send_rtp
    ssrc = sender._ssrc.to_bytes(4, "big")
    state = {"shifting": False}

    async def shifted(data: bytes) -> None:
        if data[8:12] == ssrc:
            if state["shifting"]:
                timestamp = (int.from_bytes(data[4:8], "big") + ticks) % WRAP
                data = data[:4] + timestamp.to_bytes(4, "big") + data[8:]
            elif data[1] & 0x80:
                # The marker bit ends a frame: shift from the next packet on.
                state["shifting"] = True
        await send(data)

    transport._send_rtp = shifted


# the sender's RTP timestamp origin

_origins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_random32 = rtcrtpsender.random32


def _chosen_random32() -> int:
    # aiortc draws the origin in the sender's RTP loop; every other draw (SSRCs, and
    # every sender not named in `rtp_origin`) stays random.
    caller = sys._getframe(1)
    if caller.f_code.co_name == "_run_rtp":
        origin = _origins.get(caller.f_locals.get("self"))
        if origin is not None:
            return origin
    return _random32()


def rtp_origin(sender, origin: int) -> None:
    """Make `sender` (not started yet) count its RTP timestamps from `origin`."""
    rtcrtpsender.random32 = _chosen_random32
    _origins[sender] = origin % WRAP


# packets again


async def replay_old_packets(sender, count: int = 8) -> int:
    """Send again `count` consecutive packets from the oldest end of the sender's
    history (about a hundred packets back); returns how many went."""
    history = sender._RTCRtpSender__rtp_history
    # Order the history by age: it spans 128 packets, so differences taken modulo
    # 2^16 and read as signed numbers say which packet came after which.
    some = next(iter(history.values())).sequence_number
    packets = sorted(
        history.values(),
        key=lambda p: (p.sequence_number - some + 32768) % 65536,
    )
    newest = packets[-1].sequence_number
    old = [p for p in packets if (newest - p.sequence_number) % 65536 >= 110]
    run = old[:count]
    for packet in run:
        # As retransmissions (RTX when negotiated, as browsers do): SRTP's replay
        # protection would drop the very same packet sent twice.
        await sender._retransmit(packet.sequence_number)
    return len(run)
