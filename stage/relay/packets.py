"""Cutting an encoded frame into RTP payloads, once for every viewer of a stage.

A frame is packetized the first time a viewer sends it and the payloads are kept on
the frame, so a stage with a hundred viewers cuts each frame once. What differs per
viewer (the VP8 picture ID, sequence numbers, timestamps, SSRC) is written around
these shared payloads by each viewer's outlet.
"""

from __future__ import annotations

from aiortc.codecs.h264 import H264Encoder

from .frames import MediaFrame

# Payload bytes per packet, leaving room under a 1,280-byte path MTU for the RTP
# header, its extensions, the VP8 descriptor and the SRTP tag.
PAYLOAD_MAX = 1200


def payloads_of(frame: MediaFrame) -> list[bytes]:
    """The frame's RTP payloads, without any per-viewer descriptor."""
    payloads = frame.payloads
    if payloads is None:
        payloads = frame.payloads = _packetize(frame.codec, frame.data)
    return payloads


def _packetize(codec: str, data: bytes) -> list[bytes]:
    if codec == "VP8":
        # RFC 7741: the frame is cut anywhere; the descriptor in front of each
        # piece (written per viewer) marks the first one.
        return [data[i : i + PAYLOAD_MAX] for i in range(0, len(data), PAYLOAD_MAX)]
    if codec == "H264":
        # RFC 6184 single NAL units, STAP-A and FU-A, as aiortc's sender cuts them.
        return H264Encoder._packetize(H264Encoder._split_bitstream(data))
    return [data]
