"""Encoded frames as they travel from a publisher to viewers and the recorder."""

from __future__ import annotations

import time
from typing import Any

# RTP clock rates of the codecs we relay (RFC 7587 for Opus, RFC 7741 / 6184 for video).
CLOCK_RATES = {"audio": 48000, "video": 90000}


class MediaFrame:
    """One encoded frame, with its RTP timestamp counted from the publisher's first."""

    __slots__ = (
        "kind",
        "codec",
        "data",
        "timestamp",
        "keyframe",
        "size",
        "source",
        "arrival",
        "payloads",
    )

    def __init__(
        self,
        kind: str,
        codec: str,
        data: bytes,
        timestamp: int,
        source: Any,
        keyframe: bool = True,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.data = data
        self.timestamp = timestamp
        # Whatever identifies the publisher track the frame came from: when it changes,
        # consumers re-anchor their clocks.
        self.source = source
        self.keyframe = keyframe
        self.size = size
        self.arrival = time.monotonic()
        # RTP payloads, cut once when the first viewer sends the frame (packets.py).
        self.payloads: list[bytes] | None = None


def describe_video(codec: str, data: bytes) -> tuple[bool, tuple[int, int] | None]:
    """Keyframe flag and, for VP8 keyframes, the picture size, read from the payload."""
    if codec == "VP8":
        return vp8_keyframe(data)
    if codec == "H264":
        return h264_keyframe(data), None
    return False, None


def vp8_keyframe(data: bytes) -> tuple[bool, tuple[int, int] | None]:
    # RFC 6386 section 9.1: bit 0 of the frame tag is 0 on keyframes, which then carry
    # the start code 9d 01 2a and two 14-bit little-endian dimensions.
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return False, None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return True, (width, height)


def h264_keyframe(data: bytes) -> bool:
    # aiortc hands H.264 frames over in Annex-B form: look for an IDR (5) or SPS (7).
    position = data.find(b"\x00\x00\x01")
    while position != -1 and position + 3 < len(data):
        if data[position + 3] & 0x1F in (5, 7):
            return True
        position = data.find(b"\x00\x00\x01", position + 3)
    return False


def h264_profile_level_id(data: bytes) -> str | None:
    """The RFC 6184 profile-level-id (hex) of the first SPS in an Annex-B frame.

    An SPS starts, after its one-byte NAL header, with profile_idc, the constraint
    flags and level_idc (H.264 section 7.3.2.1.1): exactly the three bytes SDP names.
    """
    position = data.find(b"\x00\x00\x01")
    while position != -1 and position + 7 <= len(data):
        if data[position + 3] & 0x1F == 7:
            return data[position + 4 : position + 7].hex()
        position = data.find(b"\x00\x00\x01", position + 3)
    return None
