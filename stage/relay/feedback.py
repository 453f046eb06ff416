"""What a viewer says back over RTCP, read the moment its datagram arrives.

aiortc takes every datagram of a connection through a queue to the DTLS transport's
task, decrypts it with a fresh buffer per packet, parses the whole compound packet into
objects, and for each receiver report builds a statistics record with a datetime. A
relay uses three things from a viewer's RTCP: that the viewer is still there (one
not heard from for VIEWER_SILENCE_TIMEOUT is dropped, venue.py), its NACKs (answered
from the outlet's history) and its PLIs and FIRs (a keyframe from the publisher). So a
viewer's SRTCP is taken off the ICE connection's data path here (ice.py), decrypted in
one shared buffer and read for just those; receiver reports, SDES, REMB and BYE are
not parsed. That was about a sixth of the relay's time at 50 viewers (bench/README.md).

The viewer's senders are not asked for remote-inbound statistics any more (round-trip
time, loss), which nothing in Stage reads. RTP, DTLS and STUN still go to aiortc, and so
does RTCP that arrives before SRTP is keyed.

Relies on aiortc 1.16 internals (pinned): the DTLS transport's state and `_rx_srtp`,
the ICE transport's aioice connection, and the senders' `_send_keyframe` hook; on
pylibsrtp 1.0's binding and session handle.
"""

from __future__ import annotations

import logging
import struct

from aiortc.rtcdtlstransport import State
from pylibsrtp._binding import ffi, lib

logger = logging.getLogger(__name__)

# RFC 3550 section 12.1, RFC 4585 section 6.1, RFC 5104 section 4.3.1.
RTPFB, PSFB = 205, 206
NACK, PLI, FIR = 1, 1, 4

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_NACK_ITEM = struct.Struct("!HH")
# Decrypted in place, one packet at a time (all on the event loop).
_BUFFER = ffi.new("char[]", 2048)
_VIEW = memoryview(ffi.buffer(_BUFFER))
_LENGTH = ffi.new("int *")


def is_srtcp(data: bytes) -> bool:
    """RFC 5761 section 4: RTCP packet types 192-223 in the second byte."""
    return len(data) >= 8 and 127 < data[0] < 192 and 191 < data[1] < 224


class Feedback:
    """One viewer's DTLS transport: its SRTCP, read for presence, NACK, PLI and FIR.

    `senders` maps each sender's SSRC to (sender, outlet) for the senders on this
    transport; `on_heard` runs for every packet that decrypts.
    """

    def __init__(self, dtls, senders: dict, on_heard) -> None:
        self._dtls = dtls
        self._senders = senders
        self._on_heard = on_heard
        self._connection = dtls.transport._connection
        self._connection.stage_feedback = self

    def detach(self) -> None:
        if getattr(self._connection, "stage_feedback", None) is self:
            self._connection.stage_feedback = None

    def datagram_received(self, data: bytes) -> bool:
        """Handle one SRTCP datagram; False leaves it to aiortc (not keyed yet)."""
        dtls = self._dtls
        session = dtls._rx_srtp
        if session is None or dtls._state is not State.CONNECTED:
            return False
        size = len(data)
        if size > len(_VIEW):
            return False
        _VIEW[:size] = data
        _LENGTH[0] = size
        if lib.srtp_unprotect_rtcp(session._srtp[0], _BUFFER, _LENGTH):
            logger.debug("viewer RTCP that does not decrypt: dropped")
            return True
        self._on_heard()
        self.read(bytes(_VIEW[: _LENGTH[0]]))
        return True

    def read(self, packet: bytes) -> None:
        """Act on the NACKs, PLIs and FIRs of a compound RTCP packet."""
        offset = 0
        end = len(packet)
        while offset + 4 <= end:
            first, kind, words = _HEADER.unpack_from(packet, offset)
            following = offset + 4 + 4 * words
            if first >> 6 != 2 or following > end:
                logger.debug("viewer RTCP malformed at byte %d: ignored", offset)
                return
            fmt = first & 0x1F
            if kind == RTPFB and fmt == NACK and words >= 3:
                self._nack(packet, offset + 8, following)
            elif kind == PSFB and fmt == PLI and words >= 2:
                self._keyframe(_SSRC.unpack_from(packet, offset + 8)[0])
            elif kind == PSFB and fmt == FIR and words >= 4:
                # The media SSRC field is unused (0); each FCI entry names a source.
                for item in range(offset + 12, following - 7, 8):
                    self._keyframe(_SSRC.unpack_from(packet, item)[0])
            offset = following

    def _nack(self, packet: bytes, start: int, end: int) -> None:
        target = self._senders.get(_SSRC.unpack_from(packet, start)[0])
        if target is None:
            return
        outlet = target[1]
        for item in range(start + 4, end - 3, 4):
            first, mask = _NACK_ITEM.unpack_from(packet, item)
            outlet.retransmit(first)
            # RFC 4585 section 6.2.1: bit i of the mask is packet first + i + 1.
            while mask:
                low = mask & -mask
                outlet.retransmit((first + low.bit_length()) & 0xFFFF)
                mask ^= low

    def _keyframe(self, ssrc: int) -> None:
        target = self._senders.get(ssrc)
        if target is not None:
            target[0]._send_keyframe()
