"""Offers in, answers out: check what a peer offers before any connection is built.

aiortc raises assorted exceptions deep inside `setRemoteDescription` for offers it
cannot use; checking first lets every bad offer become one clear sentence and a 400.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpTransceiver
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.sdp import H264Profile

from ..errors import BadRequest
from . import dtls  # noqa: F401  (every connection made here: see dtls.py)

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024

# What the relay forwards, in order of preference. Opus for audio; VP8 first for video
# because every browser viewer can receive it.
ACCEPTED = {"audio": ("opus",), "video": ("VP8", "H264")}


# RFC 8122: a hash function name and colon-separated hex pairs of its length.
FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")


def describe_accepted() -> str:
    return "audio: Opus; video: VP8 or H.264"


def parse_offer(text: str, *, sending: bool) -> aiortc_sdp.SessionDescription:
    """Parse an offer and check it has media we can use in the direction we need.

    `sending` is True for a publisher's offer (it must send to us) and False for a
    viewer's (it must receive).
    """
    if not text.strip():
        raise BadRequest("The request body is empty: send an SDP offer.")
    if not text.lstrip().startswith("v=0"):
        raise BadRequest("The body is not an SDP offer (it must start with v=0).")
    try:
        offer = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # the parser raises whatever the broken line provokes
        logger.debug("unparseable offer: %r", exc)
        raise BadRequest("The SDP offer could not be parsed.") from None

    wanted = ("sendonly", "sendrecv") if sending else ("recvonly", "sendrecv")
    media = [m for m in offer.media if m.kind in ("audio", "video")]
    usable = [m for m in media if m.direction in wanted]
    if not usable:
        role = "send" if sending else "receive"
        raise BadRequest(
            f"The offer has no audio or video section that can {role} media."
        )

    for section in media:
        if (
            not section.ice
            or not section.ice.usernameFragment
            or not section.ice.password
        ):
            raise BadRequest(
                "The offer lacks ICE credentials (a=ice-ufrag / a=ice-pwd)."
            )
        if not section.dtls or not section.dtls.fingerprints:
            raise BadRequest("The offer lacks a DTLS fingerprint (a=fingerprint).")
        for fingerprint in section.dtls.fingerprints:
            size = FINGERPRINT_BYTES.get(fingerprint.algorithm.lower())
            value = fingerprint.value
            if (
                size is None
                or not HEX_PAIRS.fullmatch(value)
                or len(value) != 3 * size - 1
            ):
                raise BadRequest(
                    "The offer's DTLS fingerprint is malformed "
                    "(a=fingerprint needs sha-256, sha-384 or sha-512 in hex pairs)."
                )
        names = {codec.name.lower() for codec in section.rtp.codecs}
        if section in usable and not names & {
            n.lower() for n in ACCEPTED[section.kind]
        }:
            offered = ", ".join(sorted({c.name for c in section.rtp.codecs})) or "none"
            raise BadRequest(
                f"No codec in the {section.kind} offer is supported (offered: {offered}). "
                f"Stage accepts {describe_accepted()}."
            )
    return offer


class StageVideo(Protocol):
    """A stage as the roulette sees it: a hub here, or a listing of another worker's."""

    video_codec: str | None
    h264_profile_level_id: str | None


@dataclass(frozen=True)
class Receivable:
    """The video a viewer's offer can receive, read before anything is answered, so
    that the roulette draws only among stages the viewer can decode."""

    codecs: frozenset[str]  # among ACCEPTED["video"], spelt as there
    h264_profiles: tuple  # of H264Profile, one per H.264 codec offered

    def takes(self, stage: StageVideo) -> bool:
        """Whether the stage's video can be answered to this offer; a stage whose
        codec is not known yet (no video so far) goes to anyone."""
        codec = stage.video_codec
        if codec is None:
            return True
        if codec not in self.codecs:
            return False
        return codec != "H264" or any(
            h264_fits(stage.h264_profile_level_id, profile)
            for profile in self.h264_profiles
        )


def receivable_video(text: str) -> Receivable | None:
    """What video a viewer's offer can receive, or None when any stage will do (it
    receives no video) or the offer cannot be read (its answer will say why)."""
    try:
        offer = aiortc_sdp.SessionDescription.parse(text)
    except Exception:  # the parser raises whatever the broken line provokes
        return None
    names = {name.lower(): name for name in ACCEPTED["video"]}
    codecs, profiles = set(), []
    for section in offer.media:
        receiving = section.direction in ("recvonly", "sendrecv")
        if section.kind != "video" or not receiving:
            continue
        for codec in section.rtp.codecs:
            name = names.get(codec.name.lower())
            if name is not None:
                codecs.add(name)
            if name == "H264":
                profiles.append(_profile_of(codec))
    if not codecs:
        return None
    return Receivable(frozenset(codecs), tuple(profiles))


def peer_connection(ice_servers: tuple[str, ...]) -> RTCPeerConnection:
    # An explicit (possibly empty) list: aiortc falls back to a public STUN server on None.
    servers = [RTCIceServer(url) for url in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def take_dtls_server_role(pc: RTCPeerConnection) -> None:
    """Answer an `actpass` offer with `a=setup:passive`: the peer starts DTLS.

    Called between setRemoteDescription and createAnswer. aiortc answers `actpass` with
    `active`: the transport's role stays "auto" while the offer is applied, and
    createAnswer turns "auto" into the client role. As DTLS client aiortc offers only
    ECDSA cipher suites, so a publisher whose certificate is RSA (GStreamer's webrtcbin)
    fails the handshake; as DTLS server it accepts it. An `active` offer already made
    the transport a server; a `passive` one (ffmpeg's) also leaves it "auto" and must
    get `active`, so the offer itself is read (aiortc 1.16, pinned).
    """
    offer = aiortc_sdp.SessionDescription.parse(pc.remoteDescription.sdp)
    actpass = {m.rtp.muxId for m in offer.media if m.dtls and m.dtls.role == "auto"}
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transceiver.mid in actpass and transport._role == "auto":
            transport._set_role("server")


def h264_profile(profile_level_id: str | None):
    """The H.264 profile a profile-level-id names (levels aside), or None."""
    try:
        return aiortc_sdp.parse_h264_profile_level_id(profile_level_id)[0]
    except ValueError:
        return None


def h264_fits(stream_profile_level_id: str | None, viewer_profile) -> bool:
    """Whether a viewer answered with `viewer_profile` can decode this H.264 stream.

    Constrained Baseline is a subset of Baseline, so it fits a Baseline viewer too.
    """
    stream = h264_profile(stream_profile_level_id)
    if stream is None or viewer_profile is None:
        return True
    if stream == viewer_profile:
        return True
    return (
        stream == H264Profile.PROFILE_CONSTRAINED_BASELINE
        and viewer_profile == H264Profile.PROFILE_BASELINE
    )


def offered_profile_level_id(pc: RTCPeerConnection, transceiver) -> str | None:
    """The profile-level-id the remote offered for the H.264 codec kept on `transceiver`.

    aiortc answers with its own copy of the codec, whose profile-level-id (42001f or
    42e01f) names aiortc's encoder, not the stream the peer sends (B32).
    """
    kept = [c for c in transceiver._codecs if c.name == "H264"]
    if not kept:
        return None
    offer = aiortc_sdp.SessionDescription.parse(pc.remoteDescription.sdp)
    for media in offer.media:
        if media.rtp.muxId != transceiver.mid:
            continue
        for codec in media.rtp.codecs:
            if codec.payloadType == kept[0].payloadType:
                return codec.parameters.get("profile-level-id")
    return None


def set_profile_level_id(transceiver, profile_level_id: str) -> None:
    """Answer H.264 with this profile-level-id (the stream that will really flow)."""
    for codec in transceiver._codecs:
        if codec.name == "H264":
            codec.parameters["profile-level-id"] = profile_level_id


def narrow_codecs(
    transceiver: RTCRtpTransceiver,
    names: tuple[str, ...],
    h264_profile_level_id: str | None = None,
) -> str | None:
    """Keep only the first offered codec among `names` (and its RTX) on a transceiver.

    Called between setRemoteDescription and createAnswer. aiortc fixes the answered
    codecs while applying the offer and has no public way to prefer one afterwards, so
    this edits the negotiated list it keeps on the transceiver (aiortc 1.16, pinned).
    Returns the chosen codec's name, or None when none of `names` was offered.
    With `h264_profile_level_id`, only H.264 that can carry that stream is taken.
    """
    kept = keep_codecs(transceiver, names, h264_profile_level_id, limit=1)
    return kept[0] if kept else None


def keep_codecs(
    transceiver: RTCRtpTransceiver,
    names: tuple[str, ...],
    h264_profile_level_id: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Keep one offered codec per name in `names`, in that order, each with its RTX.

    A viewer's answer names every video codec it may receive, so that the relay can
    move it between a VP8 and an H.264 stage on the same connection (the payload
    type says which codec a packet is). Returns the names kept, best first.
    """
    codecs = transceiver._codecs
    kept_codecs = []
    kept_names: list[str] = []
    for name in names:
        chosen = _best_offered(codecs, name, h264_profile_level_id)
        if chosen is None:
            continue
        rtx = [
            c
            for c in codecs
            if c.name.lower() == "rtx" and c.parameters.get("apt") == chosen.payloadType
        ]
        kept_codecs += [chosen, *rtx]
        kept_names.append(chosen.name)
        if limit is not None and len(kept_names) == limit:
            break
    if kept_codecs:
        transceiver._codecs = kept_codecs
    return kept_names


def _best_offered(codecs, name: str, h264_profile_level_id: str | None):
    chosen = [c for c in codecs if c.name.lower() == name.lower()]
    wanted_profile = h264_profile(h264_profile_level_id)
    if name == "H264" and wanted_profile is not None:
        # The stream's own profile first, else one that can decode it.
        exact = [c for c in chosen if _profile_of(c) == wanted_profile]
        chosen = exact or [
            c for c in chosen if h264_fits(h264_profile_level_id, _profile_of(c))
        ]
    return chosen[0] if chosen else None


def _profile_of(codec):
    # No profile-level-id means Constrained Baseline level 3.1 (what aiortc assumes).
    return h264_profile(codec.parameters.get("profile-level-id", "42e01f"))


PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"


def answer_playout_delay(pc: RTCPeerConnection, transceiver) -> None:
    """Answer the playout-delay header extension when the offer has it (video only).

    aiortc answers only the extensions it implements; the viewer's outlet writes this
    one itself (outlet.py). Ids above 14 need the two-byte header form, which the
    outlet does not write, so those are left unanswered.
    """
    offer = aiortc_sdp.SessionDescription.parse(pc.remoteDescription.sdp)
    for media in offer.media:
        if media.kind != "video" or media.rtp.muxId != transceiver.mid:
            continue
        for extension in media.rtp.headerExtensions:
            if extension.uri == PLAYOUT_DELAY_URI and 1 <= extension.id <= 14:
                transceiver._headerExtensions.append(
                    RTCRtpHeaderExtensionParameters(id=extension.id, uri=extension.uri)
                )
