"""A viewer's outlet: RTP packets written straight onto its encrypted transport.

aiortc's sender builds a packet object per packet, serializes its header extensions
in Python and awaits three coroutines on the way to the socket; for a relay that
only forwards, that was most of the cost of a viewer (bench/README.md). An outlet
keeps aiortc for everything around the media: negotiation, DTLS, the SRTP session,
ICE, receiving RTCP (NACK, PLI, receiver reports) and sending sender reports. Only
the RTP packets themselves are written here, synchronously, per frame:

    header (seq, timestamp, SSRC) + extensions + [VP8 descriptor] + shared payload
      -> SRTP protect -> the nominated ICE pair's UDP socket

Each packet is assembled in one buffer and encrypted there in place (libsrtp through
pylibsrtp's binding), then handed to the socket straight from that buffer: no bytes
object is made per packet, and the asyncio transport is bypassed while the kernel
takes everything. Once the kernel refuses a packet, the rest go through the transport,
which queues them in order (and which the backlog check below reads).

Retransmissions (NACK) are answered from a ring of recently sent packets, over RTX
when the viewer negotiated it. After each frame the sender's counters are updated
so that its RTCP sender reports map our timestamps to wall-clock time, which the
browser needs to keep audio and video in sync.

Relies on aiortc 1.16 internals (pinned): the sender's SSRCs, name-mangled report
counters and `_retransmit` hook, the DTLS transport's state and `_tx_srtp`, and
aioice's nominated pair; on pylibsrtp 1.0's binding and session handle; and on the
socket behind asyncio's datagram transport (CPython 3.11).
"""

from __future__ import annotations

import logging
import struct

from aiortc import clock
from aiortc.rtcdtlstransport import State
from aiortc.utils import random16
from pylibsrtp import _srtp_assert
from pylibsrtp._binding import ffi, lib

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
# Where packets are put together and encrypted, one at a time (all on the event loop):
# room for the largest RTP packet we write and SRTP's tag.
_PACKET = ffi.new("char[]", 2048)
_PACKET_VIEW = memoryview(ffi.buffer(_PACKET))
_PACKET_LENGTH = ffi.new("int *")
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
        session, udp, address = route
        backlog = udp.get_write_buffer_size()
        if backlog > BACKLOG_LIMIT:
            self.skipped += 1
            return False
        # Straight to the socket unless asyncio already holds packets for it.
        direct = None if backlog else udp._sock.sendto
        payloads = payloads_of(frame)
        now = clock.current_ntp_time()
        extensions = self._extensions(now)
        if frame.codec == "VP8":
            descriptors = self._vp8_descriptors()
            heads = (extensions + descriptors[0], extensions + descriptors[1])
        else:
            descriptors = None
            heads = (extensions, extensions)
        timestamp &= 0xFFFFFFFF
        first_seq = self._seq
        last = len(payloads) - 1
        self._seq = (first_seq + last + 1) & 0xFFFF

        # One record per frame, in the slot of each of its sequence numbers.
        history = self._history
        size = len(history)
        kept = (first_seq, payload_type, timestamp, descriptors, payloads)

        srtp = session._srtp[0]
        protect = lib.srtp_protect
        header = _HEADER.pack_into
        view = _PACKET_VIEW
        length = _PACKET_LENGTH
        ssrc = self._ssrc
        octets = 0
        for index, payload in enumerate(payloads):
            seq = (first_seq + index) & 0xFFFF
            history[seq % size] = kept
            head = heads[index != 0]
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
        dtls = self._sender.transport
        if dtls is None or dtls._state is not State.CONNECTED:
            return None
        connection = dtls.transport._connection
        pair = connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return None
        return dtls._tx_srtp, pair.protocol.transport, pair.remote_addr

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
        if kept is None or route is None:
            return
        first_seq, payload_type, timestamp, descriptors, payloads = kept
        index = (seq - first_seq) & 0xFFFF
        if index >= len(payloads):
            return  # the slot has been taken by a later frame
        session, udp, address = route
        marker = 0x80 if index == len(payloads) - 1 else 0
        descriptor = b"" if descriptors is None else descriptors[index != 0]
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
        extensions = self._extensions(clock.current_ntp_time())
        udp.sendto(session.protect(header + extensions + body), address)
