"""A viewer's outlet: RTP packets written straight onto its encrypted transport.

aiortc's sender builds a packet object per packet, serializes its header extensions
in Python and awaits three coroutines on the way to the socket; for a relay that
only forwards, that was most of the cost of a viewer (bench/README.md). An outlet
keeps aiortc for everything around the media: negotiation, DTLS, the SRTP session,
ICE and sending sender reports (a viewer's RTCP is read in feedback.py). Only
the RTP packets themselves are written here, synchronously, per frame:

    header (seq, timestamp, SSRC) + extensions + [VP8 descriptor] + shared payload
      -> SRTP protect -> the nominated ICE pair's UDP socket

Each packet is assembled in one buffer and encrypted there in place (libsrtp through
pylibsrtp's binding), then handed to the socket straight from that buffer: no bytes
object is made per packet, and the asyncio transport is bypassed while the kernel
takes everything. Once the kernel refuses a packet, the rest go through the transport,
which queues them in order (and which the backlog check below reads).

Retransmissions (NACK) are answered from a ring of recently sent packets, over RTX
when the viewer negotiated it. The ring is kept in flat lists of numbers and of the
frames' shared payload lists: a tuple per frame and viewer, living a second or more,
filled the collector's youngest generation (13,000-17,000 objects at each collection
with 100 viewers, 3 ms a pass, 15 ms for the next generation; bench/README.md).

The outlet also writes the RTCP sender reports in place of aiortc's sender
(reports.py says when): the NTP time and RTP timestamp of the last frame sent, which
the browser needs to keep audio and video in sync, and the packets and octets sent.
aiortc's own sender statistics stay at zero.

Relies on aiortc 1.16 internals (pinned): the sender's SSRCs, its `_retransmit` and
`_run_rtcp` hooks, the name-mangled events its `stop()` waits on and its CNAME; the
DTLS transport's state and `_tx_srtp`, and aioice's nominated pair; on pylibsrtp
1.0's binding and session handle; and on the socket behind asyncio's datagram
transport (CPython 3.11).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtcpByePacket, RtcpSdesPacket, RtcpSourceInfo
from aiortc.utils import random16, random32
from pylibsrtp import _srtp_assert
from pylibsrtp._binding import ffi, lib

from .frames import MediaFrame
from .packets import payloads_of
from .reports import reports

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
# Packets kept for retransmission: about 2.5 s of a 1 Mb/s picture, more than a
# replayed keyframe run, which is sent in one go.
HISTORY = {"video": 256, "audio": 64}
# Bytes the kernel has refused and asyncio holds for a viewer: past this the link
# cannot keep up and frames are skipped rather than queued without end.
BACKLOG_LIMIT = 256 * 1024

_HEADER = struct.Struct("!BBHII")
_RTX_SEQ = struct.Struct("!H")
# Where packets are put together and encrypted, one at a time (all on the event loop):
# room for the largest RTP packet we write and SRTP's tag.
_PACKET = ffi.new("char[]", 2048)
_PACKET_VIEW = memoryview(ffi.buffer(_PACKET))
_PACKET_LENGTH = ffi.new("int *")
# RFC 3550 section 6.4.1: V=2, no report blocks, PT=200, length 6 words; SSRC, NTP
# time, RTP timestamp, packets, octets.
_SENDER_REPORT = struct.Struct("!BBHIQIII")
# Name-mangled in aiortc's RTCRtpSender: what stop() waits on, and the CNAME.
_RTCP_STARTED = "_RTCRtpSender__rtcp_started"
_RTCP_EXITED = "_RTCRtpSender__rtcp_exited"
_CNAME = "_RTCRtpSender__cname"
# Seconds from 1900 (NTP's epoch) to 1970 (Unix time's).
_NTP_EPOCH_OFFSET = 2208988800


class Outlet:
    """Writes one sender's RTP stream: one SSRC, continuous sequence numbers."""

    def __init__(self, kind: str, transceiver) -> None:
        self.kind = kind
        self._sender = transceiver.sender
        self._transceiver = transceiver
        self._ssrc = self._sender._ssrc
        self._rtx_ssrc = self._sender._rtx_ssrc
        self._seq = random16()
        self._rtx_seq = random16()
        # RFC 3550 5.1: the first timestamp is random, like the first sequence number.
        self._timestamp_origin = random32()
        self._picture_id = random16() & 0x7FFF
        # The retransmission ring, by sequence number modulo its size: per packet, the
        # first sequence number of its frame; per frame, in its first packet's slot,
        # what it was sent with. Numbers and shared lists only (see above).
        size = HISTORY[kind]
        self._history_first: list[int | None] = [None] * size
        self._history_type = [0] * size
        self._history_timestamp = [0] * size
        self._history_picture: list[int | None] = [None] * size
        self._history_payloads: list[list | None] = [None] * size
        self._payload_types: dict[str, int] = {}
        self._rtx_types: dict[int, int] = {}
        self._extension_head = b"\xbe\xde\x00\x00"
        self._extension_padding = b""
        self._timed = False
        self._mid_element = b""
        self._playout_id: int | None = None
        self._playout_maximum = 0
        self._abs_send_time_id: int | None = None
        self._route_kept = None
        self._route_keys: tuple = ()
        self.packets = 0
        self.octets = 0
        self.skipped = 0
        # The NTP time and RTP timestamp of the last frame sent, for sender reports.
        self._sent_at = 0
        self._sent_timestamp = 0
        self._description: bytes | None = None
        self._sender._retransmit = self._retransmit
        self._sender._run_rtcp = self._run_reports

    def configure(self) -> None:
        """Read the negotiated payload types and header extensions (after the answer)."""
        transceiver = self._transceiver
        self._payload_types.clear()
        self._rtx_types.clear()
        for codec in transceiver._codecs:
            if codec.name.lower() == "rtx":
                self._rtx_types[int(codec.parameters["apt"])] = codec.payloadType
            else:
                self._payload_types.setdefault(codec.name, codec.payloadType)
        mid = b""
        self._playout_id = self._abs_send_time_id = None
        for extension in transceiver._headerExtensions:
            if extension.uri == MID_URI and transceiver.mid:
                value = transceiver.mid.encode()
                mid = bytes([extension.id << 4 | (len(value) - 1)]) + value
            elif extension.uri == ABS_SEND_TIME_URI:
                # Its 3 bytes of time are written per frame (_extensions).
                self._abs_send_time_id = extension.id
            elif extension.uri == PLAYOUT_DELAY_URI and self.kind == "video":
                self._playout_id = extension.id
        self._mid_element = mid
        self._timed = self._abs_send_time_id is not None
        self._build_extensions()

    def set_playout_delay(self, maximum_ms: int) -> None:
        """What the playout-delay extension asks of the browser from the next frame on.

        0 (min = max = 0): show each frame as soon as it is decoded, which is what makes
        a landing instant (viewer.py says when). Above 0: min 0 and this maximum, which
        leaves the browser free to hold video back for lip sync.
        """
        if maximum_ms != self._playout_maximum:
            self._playout_maximum = maximum_ms
            self._build_extensions()

    def _build_extensions(self) -> None:
        mid = self._mid_element
        playout = b""
        if self._playout_id is not None:
            # 12 bits of minimum (0) and 12 of maximum, in 10 ms units.
            units = min(self._playout_maximum // 10, 0xFFF)
            playout = bytes([self._playout_id << 4 | 2, 0, units >> 8, units & 0xFF])
        abs_send_time = b""
        if self._timed:
            # The element's head only: its time is written per frame.
            abs_send_time = bytes([self._abs_send_time_id << 4 | 2])
        # RFC 8285 one-byte header form: 0xBEDE, length in 32-bit words, elements,
        # padding. abs-send-time goes last, so that all before its time is fixed.
        elements = len(mid) + len(playout) + (4 if abs_send_time else 0)
        words = -(-elements // 4)
        padding = b"\x00" * (words * 4 - elements)
        head = b"\xbe\xde" + words.to_bytes(2, "big") + mid + playout + abs_send_time
        self._extension_head = head if self._timed else head + padding
        self._extension_padding = padding

    @property
    def sender(self):
        return self._sender

    def carries(self, codec: str) -> bool:
        return codec in self._payload_types

    # sending

    def send(self, frame: MediaFrame, timestamp: int) -> bool:
        """Send one frame now with this RTP timestamp; False if it could not go."""
        route = self._route()
        payload_type = self._payload_types.get(frame.codec)
        if route is None or payload_type is None:
            return False
        session, udp, address = route
        backlog = udp.get_write_buffer_size()
        if backlog > BACKLOG_LIMIT:
            self.skipped += 1
            return False
        # Straight to the socket unless asyncio already holds packets for it.
        direct = None if backlog else udp._sock.sendto
        payloads = payloads_of(frame)
        now = ntp_time()
        extensions = self._extensions(now)
        if frame.codec == "VP8":
            picture_id = self._next_picture_id()
            first_head, next_head = _vp8_descriptors(picture_id)
            first_head, next_head = extensions + first_head, extensions + next_head
        else:
            picture_id = None
            first_head = next_head = extensions
        timestamp = (timestamp + self._timestamp_origin) & 0xFFFFFFFF
        first_seq = self._seq
        last = len(payloads) - 1
        self._seq = (first_seq + last + 1) & 0xFFFF

        history = self._history_first
        size = len(history)
        slot = first_seq % size
        self._history_type[slot] = payload_type
        self._history_timestamp[slot] = timestamp
        self._history_picture[slot] = picture_id
        self._history_payloads[slot] = payloads

        srtp = session._srtp[0]
        protect = lib.srtp_protect
        header = _HEADER.pack_into
        view = _PACKET_VIEW
        length = _PACKET_LENGTH
        ssrc = self._ssrc
        octets = 0
        for index, payload in enumerate(payloads):
            seq = (first_seq + index) & 0xFFFF
            history[seq % size] = first_seq
            head = next_head if index else first_head
            start = 12 + len(head)
            end = start + len(payload)
            header(
                view,
                0,
                0x90,
                (0x80 if index == last else 0) | payload_type,
                seq,
                timestamp,
                ssrc,
            )
            view[12:start] = head
            view[start:end] = payload
            length[0] = end
            failed = protect(srtp, _PACKET, length)
            if failed:
                _srtp_assert(failed)
            packet = view[: length[0]]
            octets += end - 12 - len(extensions)
            if direct is not None:
                try:
                    direct(packet, address)
                    continue
                except OSError:
                    # Refused (a full socket buffer, mostly): asyncio retries this
                    # packet and queues the rest of the frame behind it.
                    direct = None
            udp.sendto(packet, address)
        self._counted(last + 1, octets, timestamp, now)
        return True

    def _route(self):
        """(SRTP session, UDP transport, address), or None while not connected.

        Kept between frames while the DTLS transport, its state and the nominated
        ICE pair stay the same: looking it up for every frame (three properties
        and a new address tuple) took a tenth of the fan-out's time.
        """
        dtls = self._sender.transport
        if self._route_kept is not None:
            kept_dtls, connection, pair = self._route_keys
            if (
                dtls is kept_dtls
                and dtls._state is State.CONNECTED
                and connection._nominated.get(1) is pair
            ):
                return self._route_kept
            self._route_kept = None
        if dtls is None or dtls._state is not State.CONNECTED:
            return None
        connection = dtls.transport._connection
        pair = connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return None
        self._route_keys = (dtls, connection, pair)
        self._route_kept = (dtls._tx_srtp, pair.protocol.transport, pair.remote_addr)
        return self._route_kept

    def _extensions(self, ntp_now: int) -> bytes:
        if not self._timed:
            return self._extension_head
        # abs-send-time: 6.18 fixed-point seconds, the middle 24 bits of NTP time.
        sent = (ntp_now >> 14) & 0xFFFFFF
        return self._extension_head + sent.to_bytes(3, "big") + self._extension_padding

    def _next_picture_id(self) -> int:
        # A 15-bit picture ID of our own, counted per viewer so that it runs on
        # across stages.
        picture_id = self._picture_id
        self._picture_id = (picture_id + 1) & 0x7FFF
        return picture_id

    def _counted(self, packets: int, octets: int, timestamp: int, ntp_now: int) -> None:
        # What the sender reports say: the last timestamp sent, when, and how much.
        self.packets += packets
        self.octets += octets
        self._sent_at = ntp_now
        self._sent_timestamp = timestamp

    # sender reports

    async def _run_reports(self) -> None:
        """Takes the place of aiortc's per-sender RTCP task (started by `send()`)."""
        getattr(self._sender, _RTCP_STARTED).set()
        reporting = reports()
        reporting.add(self)
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            pass  # the sender stops
        finally:
            reporting.discard(self)
        await self._sender._send_rtcp([RtcpByePacket(sources=[self._ssrc])])
        getattr(self._sender, _RTCP_EXITED).set()

    def report(self) -> None:
        """Send a sender report (and SDES with our CNAME) now, if connected."""
        route = self._route()
        if route is None:
            return
        session, udp, address = route
        report = _SENDER_REPORT.pack(
            0x80,
            200,
            6,
            self._ssrc,
            self._sent_at,
            self._sent_timestamp,
            self.packets & 0xFFFFFFFF,
            self.octets & 0xFFFFFFFF,
        )
        packet = report + self._sdes()
        end = len(packet)
        _PACKET_VIEW[:end] = packet
        _PACKET_LENGTH[0] = end
        failed = lib.srtp_protect_rtcp(session._srtp[0], _PACKET, _PACKET_LENGTH)
        if failed:
            logger.debug("%s sender report not protected: %d", self.kind, failed)
            return
        udp.sendto(bytes(_PACKET_VIEW[: _PACKET_LENGTH[0]]), address)

    def _sdes(self) -> bytes:
        if self._description is None:
            cname = getattr(self._sender, _CNAME, None)
            if cname is None:
                return b""
            chunk = RtcpSourceInfo(ssrc=self._ssrc, items=[(1, cname.encode())])
            self._description = bytes(RtcpSdesPacket(chunks=[chunk]))
        return self._description

    # retransmission

    async def _retransmit(self, seq: int) -> None:
        # aiortc's hook, for NACKs that reach the sender through aiortc.
        self.retransmit(seq)

    def retransmit(self, seq: int) -> None:
        """Send packet `seq` again if it is still in the history (a NACK)."""
        size = len(self._history_first)
        first_seq = self._history_first[seq % size]
        route = self._route()
        if first_seq is None or route is None:
            return
        frame_slot = first_seq % size
        payloads = self._history_payloads[frame_slot]
        index = (seq - first_seq) & 0xFFFF
        if (
            self._history_first[frame_slot] != first_seq
            or payloads is None
            or index >= len(payloads)
        ):
            return  # the slots have been taken by later frames
        payload_type = self._history_type[frame_slot]
        timestamp = self._history_timestamp[frame_slot]
        picture_id = self._history_picture[frame_slot]
        session, udp, address = route
        marker = 0x80 if index == len(payloads) - 1 else 0
        if picture_id is None:
            descriptor = b""
        else:
            descriptor = _vp8_descriptors(picture_id)[index != 0]
        rtx_type = self._rtx_types.get(payload_type)
        if rtx_type is None:
            header = _HEADER.pack(
                0x90, marker | payload_type, seq, timestamp, self._ssrc
            )
            body = descriptor + payloads[index]
        else:
            # RFC 4588: the original sequence number leads the RTX payload.
            rtx_seq = self._rtx_seq
            self._rtx_seq = (rtx_seq + 1) & 0xFFFF
            header = _HEADER.pack(
                0x90, marker | rtx_type, rtx_seq, timestamp, self._rtx_ssrc
            )
            body = _RTX_SEQ.pack(seq) + descriptor + payloads[index]
        logger.debug("retransmitting %s packet %d", self.kind, seq)
        extensions = self._extensions(ntp_time())
        udp.sendto(session.protect(header + extensions + body), address)


def _vp8_descriptors(picture_id: int) -> tuple[bytes, bytes]:
    """VP8 payload descriptors for a frame's first packet and for the others.

    RFC 7741 section 4.2: X=1, S on the first packet, I=1, a 15-bit picture ID.
    """
    tail = bytes([0x80, 0x80 | picture_id >> 8, picture_id & 0xFF])
    return b"\x90" + tail, b"\x80" + tail


def ntp_time() -> int:
    """Now as a 64-bit NTP timestamp (32.32 fixed-point seconds since 1900).

    aiortc's clock.current_ntp_time gives the same through datetime, at several
    times the cost; it is read once per frame per viewer.
    """
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return (seconds + _NTP_EPOCH_OFFSET) << 32 | (nanoseconds << 32) // 1_000_000_000
