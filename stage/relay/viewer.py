"""A viewer: one peer connection for the whole visit, fed from whichever stage it is on.

Each outgoing track sends encoded frames through its own RTP outlet as they arrive
(outlet.py); aiortc negotiates, encrypts and does RTCP around it. Moving to another stage (Next, or the
performer leaving) re-points the tracks; outgoing timestamps carry on from where they
were, so the viewer's jitter buffer sees one continuous stream.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from ..errors import BadRequest
from .feedback import Feedback
from .frames import CLOCK_RATES, MediaFrame
from .ice import reachable_candidates
from .negotiation import (
    ACCEPTED,
    answer_playout_delay,
    h264_profile,
    keep_codecs,
    parse_offer,
    peer_connection,
    set_profile_level_id,
    take_dtls_server_role,
)
from .outlet import Outlet

logger = logging.getLogger(__name__)

# Frames held for a viewer whose connection is not up yet (it is attached to a stage
# as soon as it is answered). Video: about a second, then it starts again on a
# keyframe. Audio: 60 ms. Audio sent in a burst stays in the browser's audio buffer
# as delay: while video lands (playout delay 0, below) that delay is the lip-sync
# error, and once lip sync takes over video is held back by as much.
QUEUE_LIMIT = {"video": 90, "audio": 3}
# Video lands with playout delay 0 (outlet.py): the browser shows the replayed run and
# the first live frames the moment they are decoded, which is what makes Next instant.
# Held at 0, though, it also keeps the browser from holding video back to match its
# audio buffer: sound came 130 ms after the picture (getStats' estimated playout
# times; 140 ms between flash and beep on the page). So once a landing has settled,
# video asks for min 0, max SYNC_DELAY_MS, and the browser's lip sync takes over;
# the next landing asks for 0 again.
LANDING_SECONDS = 1.0
SYNC_DELAY_MS = 1000
# Replayed frames are put one clock tick apart, ending at "now": the browser decodes
# them straight away and shows the newest, which is the publisher's current picture.
REPLAY_STEP = 1


def _frame_step(kind: str) -> int:
    # One frame's worth of ticks at the usual rates: 30 fps video, 20 ms Opus.
    return 3000 if kind == "video" else 960


class ViewerTrack(MediaStreamTrack):
    """One outgoing track: decides what to send and at which timestamp.

    Frames go out through the track's outlet the moment the hub hands them over
    (outlet.py); aiortc's sender only waits on `recv` to learn that the connection is
    up, and keeps doing RTCP.
    """

    def __init__(self, kind: str, viewer: Viewer, outlet: Outlet) -> None:
        super().__init__()
        self.kind = kind
        self._viewer = viewer
        self.outlet = outlet
        self._rate = CLOCK_RATES[kind]
        self._waiting: collections.deque = collections.deque()
        self._connected = False
        self._stopped = asyncio.Event()
        self._source = None
        self._offset = 0
        self._last_pts: int | None = None
        self._last_sent = 0.0
        self._needs_keyframe = kind == "video"
        self._settles_at: float | None = None
        self.forwarded = 0
        self.dropped = 0

    def retarget(self) -> None:
        """Forget the current source: the next frame, from any source, re-anchors."""
        self._waiting.clear()
        self._source = None
        self._needs_keyframe = self.kind == "video"

    def push(self, frame: MediaFrame) -> None:
        if self.readyState != "live":
            return
        if frame.source is not self._source:
            # A new source (another stage, or the performer reconnected): video
            # can only start on a keyframe of its own.
            if self.kind == "video" and not frame.keyframe:
                self._needs_keyframe = True
                self._viewer.want_keyframe()
                return
            self._anchor(frame)
        if self._needs_keyframe:
            if not frame.keyframe:
                self._viewer.want_keyframe()
                return
            self._needs_keyframe = False
        self._deliver(frame, frame.timestamp + self._offset)

    def replay(self, frames: list[MediaFrame]) -> None:
        """Start from a kept keyframe and the frames after it, squeezed in time."""
        if not frames or self.readyState != "live":
            return
        count = len(frames)
        now = self._next_start(room=count * REPLAY_STEP)
        last = frames[-1]
        self._waiting.clear()
        # Live frames go on at the publisher's pace from where the newest kept frame
        # would be in real time (it arrived a moment ago), never before `now`.
        age = int((time.monotonic() - last.arrival) * self._rate)
        self._offset = max(now - age, now + 1 - _frame_step(self.kind)) - last.timestamp
        self._source = last.source
        self._needs_keyframe = False
        self._land()
        for i, frame in enumerate(frames):
            if not self._deliver(frame, now - (count - 1 - i) * REPLAY_STEP):
                break

    def _next_start(self, room: int = 1) -> int:
        """The outgoing timestamp of "now", at least `room` ticks past the last one.

        Timestamps follow the wall clock across switches: a switch looks to the
        browser like a short gap, never a jump back and never a jump ahead. (Running
        ahead adds up over many Nexts, and the browser then holds every picture back
        by as much.)
        """
        if self._last_pts is None:
            return room
        idle = int((time.monotonic() - self._last_sent) * self._rate)
        return self._last_pts + max(room, idle)

    def _anchor(self, frame: MediaFrame) -> None:
        self._offset = self._next_start() - frame.timestamp
        self._source = frame.source
        self._waiting.clear()
        self._land()

    def _land(self) -> None:
        if self.kind == "video":
            self.outlet.set_playout_delay(0)
            self._settles_at = time.monotonic() + LANDING_SECONDS

    def _deliver(self, frame: MediaFrame, pts: int) -> bool:
        """Send a frame now, or hold it until the connection is up."""
        if not self._connected:
            if len(self._waiting) >= QUEUE_LIMIT[self.kind]:
                self.dropped += 1
                self._waiting.popleft()
                if self.kind == "video":
                    # The oldest pictures are gone: start again on a keyframe.
                    self._waiting.clear()
                    self._needs_keyframe = not frame.keyframe
                    if self._needs_keyframe:
                        self._viewer.want_keyframe()
                        return False
            self._waiting.append((frame, pts))
            return True
        if not self.outlet.send(frame, pts):
            # The link cannot take it (or the codec is not this viewer's): skip to the
            # next picture that stands on its own.
            self.dropped += 1
            if self.kind == "video":
                self._needs_keyframe = True
                self._viewer.want_keyframe()
            return False
        self._last_pts = pts
        self._last_sent = time.monotonic()
        self.forwarded += 1
        if self._settles_at is not None and self._last_sent >= self._settles_at:
            self._settles_at = None
            self.outlet.set_playout_delay(SYNC_DELAY_MS)
        return True

    async def recv(self):
        """Called by aiortc's sender once the connection is up; never yields a frame."""
        if not self._connected:
            self._connected = True
            waiting, self._waiting = self._waiting, collections.deque()
            for frame, pts in waiting:
                if not self._deliver(frame, pts):
                    break
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class Viewer:
    """A visit: a peer connection, its tracks, and the stage they are on."""

    def __init__(self, visitor: str, pc: RTCPeerConnection) -> None:
        self.id = secrets.token_hex(8)
        self.visitor = visitor
        self.pc = pc
        self.tracks: dict[str, ViewerTrack] = {}
        self.hub = None
        self.recent: collections.deque[str] = collections.deque(maxlen=3)
        # Video codecs answered, the first preferred: the relay switches between them
        # by payload type when the viewer moves to a stage sending another codec.
        self.video_codecs: tuple[str, ...] = ()
        self.h264_profile = None  # the H.264 profile answered, when H.264 is among them
        self.joined_at = time.monotonic()
        self.last_heard = self.joined_at
        self.gone = asyncio.Event()
        self.watch_id: int | None = None
        self._feedback: list[Feedback] = []
        pc.on("connectionstatechange", self._on_state)

    @property
    def video_codec(self) -> str | None:
        return self.video_codecs[0] if self.video_codecs else None

    @classmethod
    async def from_offer(
        cls,
        visitor: str,
        offer_text: str,
        ice_servers: tuple[str, ...],
        video_codec,
        h264_profile_level_id: str | None = None,
    ) -> tuple[Viewer, str]:
        """Answer a viewer's offer, preferring `video_codec` for video if it can take it.

        For H.264 the answer names `h264_profile_level_id`, the stage's stream (B32).
        """
        parse_offer(offer_text, sending=False)
        pc = peer_connection(ice_servers)
        viewer = cls(visitor, pc)
        try:
            answer = await viewer._negotiate(
                offer_text, video_codec, h264_profile_level_id
            )
        except BaseException:
            await pc.close()
            raise
        return viewer, answer

    async def _negotiate(
        self,
        offer_text: str,
        video_codec: str | None,
        h264_profile_level_id: str | None,
    ) -> str:
        try:
            offer = RTCSessionDescription(reachable_candidates(offer_text), "offer")
            await self.pc.setRemoteDescription(offer)
        except Exception as exc:
            logger.debug("viewer offer refused by aiortc: %r", exc)
            raise BadRequest(f"The offer could not be used: {exc}") from None

        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            if kind in self.tracks or transceiver.direction not in (
                "recvonly",
                "sendrecv",
            ):
                transceiver.direction = "inactive"
                continue
            preferred = ACCEPTED[kind]
            if kind == "video" and video_codec:
                preferred = (video_codec, *[c for c in preferred if c != video_codec])
            profile_level_id = h264_profile_level_id if kind == "video" else None
            codecs = keep_codecs(transceiver, preferred, profile_level_id)
            if not codecs:
                transceiver.direction = "inactive"
                continue
            if kind == "video":
                self.video_codecs = tuple(codecs)
                answer_playout_delay(self.pc, transceiver)
            if "H264" in codecs:
                h264 = next(c for c in transceiver._codecs if c.name == "H264")
                answered = h264.parameters.get("profile-level-id")
                if h264_profile(answered) == h264_profile(profile_level_id):
                    # Same profile: name the stream's own level too (B32).
                    set_profile_level_id(transceiver, profile_level_id)
                    answered = profile_level_id
                self.h264_profile = h264_profile(answered)
            track = ViewerTrack(kind, self, Outlet(kind, transceiver))
            self.tracks[kind] = track
            sender = self.pc.addTrack(track)
            # In packet mode aiortc drops a viewer's PLI/FIR (it would only flag an
            # encoder that does not exist); send it to the publisher instead.
            sender._send_keyframe = self.want_keyframe
            self._listen_for_reports(sender)
        if not self.tracks:
            raise BadRequest(
                "The offer can receive neither Opus audio nor VP8/H.264 video."
            )

        take_dtls_server_role(self.pc)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        for track in self.tracks.values():
            track.outlet.configure()
        return self.pc.localDescription.sdp

    def _listen_for_reports(self, sender) -> None:
        # RTCP that aiortc handles (before feedback.py takes over) is heard too.
        handle = sender._handle_rtcp_packet

        async def heard(packet) -> None:
            self.last_heard = time.monotonic()
            await handle(packet)

        sender._handle_rtcp_packet = heard

    def want_keyframe(self) -> None:
        if self.hub is not None:
            self.hub.want_keyframe()

    def attach(self, hub) -> None:
        """Feed this viewer from `hub` (or from nothing, when `hub` is None)."""
        if self.hub is not None:
            for kind, track in self.tracks.items():
                self.hub.unsubscribe(kind, track)
            self.hub.viewers.discard(self)
        self.hub = hub
        for track in self.tracks.values():
            track.retarget()
        if hub is None:
            return
        self.recent.append(hub.stage_id)
        hub.viewers.add(self)
        for kind, track in self.tracks.items():
            hub.subscribe(kind, track)
        video = self.tracks.get("video")
        picture = hub.current_picture() if video else []
        if picture:
            video.replay(picture)
        else:
            hub.want_keyframe()

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def _read_feedback(self) -> None:
        """Read this viewer's RTCP as it arrives, for each transport its senders use."""
        by_transport: dict = {}
        for track in self.tracks.values():
            sender = track.outlet.sender
            if sender.transport is not None:
                senders = by_transport.setdefault(sender.transport, {})
                senders[sender._ssrc] = (sender, track.outlet)
        for dtls, senders in by_transport.items():
            self._feedback.append(Feedback(dtls, senders, self.heard))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.debug("viewer %s: connection %s", self.id, state)
        if state == "connected" and not self._feedback and not self.gone.is_set():
            self._read_feedback()
        if state in ("failed", "closed"):
            self.gone.set()

    async def close(self) -> None:
        self.gone.set()
        for feedback in self._feedback:
            feedback.detach()
        self._feedback.clear()
        for track in self.tracks.values():
            track.stop()
        await self.pc.close()
