"""A viewer's outlet: RTP packets written straight onto its encrypted transport.

aiortc's sender builds a packet object per packet, serializes its header extensions
in Python and awaits three coroutines on the way to the socket; for a relay that
only forwards, that was most of the cost of a viewer (bench/README.md). An outlet
keeps aiortc for everything around the media: negotiation, DTLS, the SRTP session,
ICE, receiving RTCP (NACK, PLI, receiver reports) and sending sender reports. Only
the RTP packets themselves are written here, synchronously, per frame:

    header (seq, timestamp, SSRC) + extensions + [VP8 descriptor] + shared payload
      -> SRTP protect -> the nominated ICE pair's UDP transport

Retransmissions (NACK) are answered from a ring of recently sent packets, over RTX
when the viewer negotiated it. After each frame the sender's counters are updated
so that its RTCP sender reports map our timestamps to wall-clock time, which the
browser needs to keep audio and video in sync.

Relies on aiortc 1.16 internals (pinned): the sender's SSRCs, name-mangled report
counters and `_retransmit` hook, the DTLS transport's state and `_tx_srtp`, and
aioice's nominated pair.
"""

from __future__ import annotations

import logging
import struct

from aiortc import clock
from aiortc.rtcdtlstransport import State
from aiortc.utils import random16

from .frames import MediaFrame
from .packets import payloads_of

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
_SENDER = "_RTCRtpSender__"


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
        self._picture_id = random16() & 0x7FFF
        self._history: list[tuple | None] = [None] * HISTORY[kind]
        self._payload_types: dict[str, int] = {}
        self._rtx_types: dict[int, int] = {}
        self._mid_element = b""
        self._playout_element = b""
        self._abs_send_time_id = 0
        self.packets = 0
        self.octets = 0
        self.skipped = 0
        self._sender._retransmit = self._retransmit

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
        for extension in transceiver._headerExtensions:
            if extension.uri == MID_URI and transceiver.mid:
                mid = transceiver.mid.encode()
                self._mid_element = bytes([extension.id << 4 | (len(mid) - 1)]) + mid
            elif extension.uri == ABS_SEND_TIME_URI:
                self._abs_send_time_id = extension.id
            elif extension.uri == PLAYOUT_DELAY_URI and self.kind == "video":
                # Minimum and maximum delay 0 (12 bits each, 10 ms units): the browser
                # shows each frame as soon as it is decoded. Without it, Chromium's
                # delay target grows with every Next (a replayed run arrives at once
                # and looks like jitter) and lip sync holds video back to the audio
                # buffer: p50 530 ms from Next to picture against 31 ms with it, in
                # the same session (bench/README.md).
                self._playout_element = bytes([extension.id << 4 | 2, 0, 0, 0])

    def carries(self, codec: str) -> bool:
        return codec in self._payload_types

    # sending

    def send(self, frame: MediaFrame, timestamp: int) -> bool:
        """Send one frame now with this RTP timestamp; False if it could not go."""
        route = self._route()
        payload_type = self._payload_types.get(frame.codec)
        if route is None or payload_type is None:
            return False
        protect, udp, address = route
        if udp.get_write_buffer_size() > BACKLOG_LIMIT:
            self.skipped += 1
            return False
        payloads = payloads_of(frame)
        now = clock.current_ntp_time()
        extensions = self._extensions(now)
        descriptors = self._vp8_descriptors() if frame.codec == "VP8" else None
        timestamp &= 0xFFFFFFFF
        last = len(payloads) - 1
        history = self._history
        size = len(history)
        octets = 0
        for index, payload in enumerate(payloads):
            seq = self._seq
            self._seq = (seq + 1) & 0xFFFF
            marker = 0x80 if index == last else 0
            descriptor = b""
            if descriptors is not None:
                descriptor = descriptors[index != 0]
            header = _HEADER.pack(
                0x90, marker | payload_type, seq, timestamp, self._ssrc
            )
            udp.sendto(protect(header + extensions + descriptor + payload), address)
            history[seq % size] = (
                seq,
                marker | payload_type,
                timestamp,
                descriptor,
                payload,
            )
            octets += len(descriptor) + len(payload)
        self._counted(len(payloads), octets, timestamp, now)
        return True

    def _route(self):
        dtls = self._sender.transport
        if dtls is None or dtls._state is not State.CONNECTED:
            return None
        connection = dtls.transport._connection
        pair = connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return None
        return dtls._tx_srtp.protect, pair.protocol.transport, pair.remote_addr

    def _extensions(self, ntp_now: int) -> bytes:
        # RFC 8285 one-byte header form: 0xBEDE, length in 32-bit words, elements.
        elements = self._mid_element + self._playout_element
        if self._abs_send_time_id:
            sent = (ntp_now >> 14) & 0xFFFFFF
            elements += bytes([self._abs_send_time_id << 4 | 2]) + sent.to_bytes(
                3, "big"
            )
        padding = -len(elements) % 4
        elements += b"\x00" * padding
        return b"\xbe\xde" + (len(elements) // 4).to_bytes(2, "big") + elements

    def _vp8_descriptors(self) -> tuple[bytes, bytes]:
        # RFC 7741 section 4.2: X=1, S on the first packet, I=1, a 15-bit picture ID
        # of our own, counted per viewer so that it runs on across stages.
        picture_id = self._picture_id
        self._picture_id = (picture_id + 1) & 0x7FFF
        tail = bytes([0x80, 0x80 | picture_id >> 8, picture_id & 0xFF])
        return b"\x90" + tail, b"\x80" + tail

    def _counted(self, packets: int, octets: int, timestamp: int, ntp_now: int) -> None:
        # What the sender's RTCP sender reports say: the last timestamp sent, when,
        # and how much (aiortc reads these name-mangled fields in _run_rtcp).
        self.packets += packets
        self.octets += octets
        sender = self._sender
        setattr(sender, _SENDER + "ntp_timestamp", ntp_now)
        setattr(sender, _SENDER + "rtp_timestamp", timestamp)
        setattr(sender, _SENDER + "packet_count", self.packets)
        setattr(sender, _SENDER + "octet_count", self.octets)

    # retransmission

    async def _retransmit(self, seq: int) -> None:
        kept = self._history[seq % len(self._history)]
        route = self._route()
        if kept is None or kept[0] != seq or route is None:
            return
        protect, udp, address = route
        _, marker_type, timestamp, descriptor, payload = kept
        payload_type = marker_type & 0x7F
        rtx_type = self._rtx_types.get(payload_type)
        if rtx_type is None:
            header = _HEADER.pack(0x90, marker_type, seq, timestamp, self._ssrc)
            body = descriptor + payload
        else:
            # RFC 4588: the original sequence number leads the RTX payload.
            rtx_seq = self._rtx_seq
            self._rtx_seq = (rtx_seq + 1) & 0xFFFF
            header = _HEADER.pack(
                0x90,
                (marker_type & 0x80) | rtx_type,
                rtx_seq,
                timestamp,
                self._rtx_ssrc,
            )
            body = _RTX_SEQ.pack(seq) + descriptor + payload
        logger.debug("retransmitting %s packet %d", self.kind, seq)
        udp.sendto(
            protect(header + self._extensions(clock.current_ntp_time()) + body), address
        )
