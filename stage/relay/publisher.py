"""A publisher: the performer's peer connection, tapped before aiortc decodes anything.

aiortc's receiver reassembles frames in its jitter buffer and queues them for a decoder
thread. The tap takes that queue's place (see RELAY-NOTES.md), so frames reach the stage
hub still encoded, and a buffer of ours takes the jitter buffer's, so they leave as soon
as they are whole (jitter.py), while aiortc keeps doing NACK, RTX, receiver reports and keyframe
requests for us.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtp import RtcpSrPacket

from ..errors import BadRequest
from .frames import CLOCK_RATES, MediaFrame, describe_video, h264_profile_level_id
from .ice import reachable_candidates
from .jitter import AudioFrameBuffer, VideoFrameBuffer
from .negotiation import (
    ACCEPTED,
    narrow_codecs,
    offered_profile_level_id,
    parse_offer,
    peer_connection,
    set_profile_level_id,
    take_dtls_server_role,
)
from .watchdog import StallWatchdog

logger = logging.getLogger(__name__)

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)
# After video frames were lost for good, later frames are held back until a keyframe,
# since they would decode to a smeared picture. A publisher that ignores keyframe
# requests is forwarded again after this long: a damaged picture beats none.
HOLD_LIMIT = 3.0


class FrameTap:
    """Stands where a receiver's decoder queue was: encoded frames go to a callback.

    `put` runs on the event loop (from the receiver's RTP handler) with the first frame
    a packet completed; any further frames that packet made whole are taken from the
    receiver's buffer here. `get` runs in the receiver's decoder thread, which now only
    waits for the stop signal.
    """

    def __init__(self, receiver: RTCRtpReceiver, on_frame: Callable) -> None:
        # aiortc's own buffer (a test viewer's) offers one frame per packet only.
        buffer = receiver._RTCRtpReceiver__jitter_buffer
        self._take_ready = getattr(buffer, "take_ready", lambda: None)
        self._clock = receiver._RTCRtpReceiver__timestamp_mapper
        self._on_frame = on_frame
        self._stopped = threading.Event()

    def put(self, item) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, frame = item
        while frame is not None:
            try:
                self._on_frame(codec, frame)
            except Exception:
                # Never let a consumer's fault reach aiortc's transport loop.
                logger.exception("frame tap: consumer failed")
            frame = self._take_ready()
            if frame is not None:
                frame.timestamp = self._clock.map(frame.timestamp)

    def get(self):
        self._stopped.wait()
        return None


def nearest_step(difference: int) -> int:
    """A difference of two 32-bit RTP timestamps, the shorter way round: -2^31..2^31."""
    return (difference + (1 << 31)) % (1 << 32) - (1 << 31)


class PublishedTrack:
    """One incoming track: its codec, and how its RTP clock maps to the sender's clock."""

    def __init__(self, publisher: Publisher, kind: str, codec: str, receiver) -> None:
        self.publisher = publisher
        self.kind = kind
        self.codec = codec
        self.receiver = receiver
        self.clock_rate = CLOCK_RATES[kind]
        self.size: tuple[int, int] | None = None
        # The last frame's RTP timestamp as sent (32 bits), and counted from the first
        # frame's (unbounded; what frames carry, see `count`).
        self.last_rtp_timestamp: int | None = None
        self.last_timestamp = 0
        self.watchdog: StallWatchdog | None = None
        # Since when frames are held back waiting for a keyframe (None: not waiting).
        self.held_since: float | None = None
        # H.264 only: what the offer said, then what the stream's SPS says (B32).
        self.profile_level_id: str | None = None
        self.sps_seen = asyncio.Event()
        # (sender time in seconds since 1970, RTP timestamp counted like frame timestamps)
        self.sender_report: tuple[float, int] | None = None

    def count(self, jitter_frame) -> int:
        """The frame's RTP timestamp, counted from the first frame's.

        aiortc's receiver counts them too, but takes every step back for a wrap past
        2^32 and adds 2^32 from then on. Steps back do happen without any wrap: a
        retransmission that arrives long after its neighbours resets aiortc's jitter
        buffer, which then hands over an older frame once more. Its count would put
        every later frame 13 hours (2^32 ticks at 90 kHz) ahead. Here each frame is
        counted from the one before by the shorter way round the 32-bit circle, so a
        wrap moves on by a few ticks and a stale frame steps back by a few.
        """
        mapper = self.receiver._RTCRtpReceiver__timestamp_mapper
        rtp = (mapper._origin + jitter_frame.timestamp) & 0xFFFFFFFF
        if self.last_rtp_timestamp is None:
            counted = 0
        else:
            counted = self.last_timestamp + nearest_step(rtp - self.last_rtp_timestamp)
        self.last_rtp_timestamp, self.last_timestamp = rtp, counted
        return counted

    def note_sender_report(self, packet: RtcpSrPacket) -> None:
        # Bring the report's 32-bit RTP time onto the frames' count, taking the
        # nearest wrap.
        if self.last_rtp_timestamp is None:
            return
        step = nearest_step(packet.sender_info.rtp_timestamp - self.last_rtp_timestamp)
        ntp = packet.sender_info.ntp_timestamp
        seconds = (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)
        self.sender_report = (seconds, self.last_timestamp + step)

    def sender_time(self, timestamp: int) -> float | None:
        """When the publisher captured a frame, by its own clock, if it reported one."""
        if self.sender_report is None:
            return None
        seconds, counted = self.sender_report
        return seconds + (timestamp - counted) / self.clock_rate


class VideoDescribed:
    """What a stage hub and its viewers read of a publisher's video track."""

    tracks: dict

    @property
    def video_codec(self) -> str | None:
        track = self.tracks.get("video")
        return track.codec if track else None

    @property
    def h264_profile_level_id(self) -> str | None:
        track = self.tracks.get("video")
        return track.profile_level_id if track else None


class Publisher(VideoDescribed):
    def __init__(self, stage_id: str, pc: RTCPeerConnection) -> None:
        self.id = secrets.token_hex(8)
        self.stage_id = stage_id
        self.pc = pc
        self.tracks: dict[str, PublishedTrack] = {}
        self.connected = asyncio.Event()
        self.gone = asyncio.Event()
        self.said_goodbye = False  # ended by its owner (WHIP DELETE), not dropped
        # Where frames go once the stage hub takes this publisher on.
        self.deliver: Callable[[MediaFrame], None] | None = None
        # Who asks for keyframes (coalesced, retried) once a hub has this publisher.
        self.want_keyframe: Callable[[], None] | None = None
        self._keyframe_task: asyncio.Task | None = None

        pc.on("connectionstatechange", self._on_state)

    @classmethod
    async def from_offer(
        cls, stage_id: str, offer_text: str, ice_servers: tuple[str, ...]
    ) -> tuple[Publisher, str]:
        parse_offer(offer_text, sending=True)
        pc = peer_connection(ice_servers)
        publisher = cls(stage_id, pc)
        try:
            answer = await publisher._negotiate(offer_text)
        except BaseException:
            await pc.close()
            raise
        return publisher, answer

    async def _negotiate(self, offer_text: str) -> str:
        pending: list = []
        self.pc.on("track", lambda track: pending.append(track))
        try:
            offer = RTCSessionDescription(reachable_candidates(offer_text), "offer")
            await self.pc.setRemoteDescription(offer)
        except Exception as exc:
            logger.debug("publisher offer refused by aiortc: %r", exc)
            raise BadRequest(f"The offer could not be used: {exc}") from None

        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is None or transceiver.kind in self.tracks:
                transceiver.direction = "inactive"
                continue
            codec = narrow_codecs(transceiver, ACCEPTED[transceiver.kind])
            if codec is None:
                transceiver.direction = "inactive"
                continue
            transceiver.direction = "recvonly"
            track = self._tap(transceiver.kind, codec, transceiver.receiver)
            if codec == "H264":
                # Answer with the profile the publisher said it sends, not aiortc's.
                offered = offered_profile_level_id(self.pc, transceiver)
                if offered:
                    set_profile_level_id(transceiver, offered)
                    track.profile_level_id = offered
        if not self.tracks:
            raise BadRequest("The offer sends no audio or video Stage can use.")

        take_dtls_server_role(self.pc)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def _tap(self, kind: str, codec: str, receiver: RTCRtpReceiver) -> PublishedTrack:
        track = PublishedTrack(self, kind, codec, receiver)
        self.tracks[kind] = track

        def on_frame(codec_parameters, jitter_frame) -> None:
            jitter_frame.timestamp = track.count(jitter_frame)
            keyframe, size = True, None
            if kind == "video":
                track.watchdog.frame_released()
                keyframe, size = describe_video(track.codec, jitter_frame.data)
                if size:
                    track.size = size
                if track.held_since is not None:
                    held = time.monotonic() - track.held_since
                    if not keyframe and held < HOLD_LIMIT:
                        return
                    track.held_since = None
                if keyframe and track.codec == "H264":
                    sps = h264_profile_level_id(jitter_frame.data)
                    if sps:
                        track.profile_level_id = sps
                        track.sps_seen.set()
            if self.deliver is not None:
                self.deliver(
                    MediaFrame(
                        kind,
                        track.codec,
                        jitter_frame.data,
                        jitter_frame.timestamp,
                        track,
                        keyframe,
                        size,
                    )
                )

        # Frames leave the receiver as soon as they are whole (jitter.py).
        buffer = VideoFrameBuffer() if kind == "video" else AudioFrameBuffer()
        receiver._RTCRtpReceiver__jitter_buffer = buffer
        if kind == "video":
            track.watchdog = StallWatchdog(
                f"publisher {self.id}", receiver, lambda: self._picture_lost(track)
            )

        # The receiver's decoder thread has not started yet (that happens once the
        # connection is up), so its queue can still be swapped.
        receiver._RTCRtpReceiver__decoder_queue = FrameTap(receiver, on_frame)

        handle_rtcp = receiver._handle_rtcp_packet

        async def on_rtcp(packet) -> None:
            if isinstance(packet, RtcpSrPacket):
                track.note_sender_report(packet)
            await handle_rtcp(packet)

        receiver._handle_rtcp_packet = on_rtcp
        return track

    def _picture_lost(self, track: PublishedTrack) -> None:
        track.held_since = time.monotonic()
        if self.want_keyframe is not None:
            self.want_keyframe()
        else:
            self.request_keyframe()

    async def h264_described(self, timeout: float) -> None:
        """Wait (at most `timeout`) until an H.264 stream's first SPS has been seen.

        Encoders offer a profile-level-id that need not match their SPS (ffmpeg offers
        42001e and sends Constrained Baseline, 42c01e): a viewer is answered with the
        SPS's once it is known (B32).
        """
        track = self.tracks.get("video")
        if track is None or track.codec != "H264" or track.sps_seen.is_set():
            return
        try:
            await asyncio.wait_for(track.sps_seen.wait(), timeout)
        except TimeoutError:
            logger.debug("publisher %s: no SPS yet after %.1f s", self.id, timeout)

    def request_keyframe(self) -> None:
        """Send a PLI upstream (the hub decides how often)."""
        track = self.tracks.get("video")
        if track is None or self.gone.is_set():
            return
        sources = track.receiver.getSynchronizationSources()
        for source in sources:
            logger.debug("publisher %s: PLI to ssrc %s", self.id, source.source)
            asyncio.ensure_future(track.receiver._send_rtcp_pli(source.source))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.debug("publisher %s: connection %s", self.id, state)
        if state == "connected":
            self.connected.set()
            self._watch(True)
        elif state in ("failed", "closed"):
            self.gone.set()
            self._watch(False)
            if state == "failed":
                await self.pc.close()

    def _watch(self, on: bool) -> None:
        for track in self.tracks.values():
            if track.watchdog is None:
                continue
            if on:
                track.watchdog.start()
            else:
                track.watchdog.stop()

    async def close(self) -> None:
        self.gone.set()
        self._watch(False)
        await self.pc.close()
